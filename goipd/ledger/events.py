"""Status callback events (goipd/callbacks/) as both backends store and return them (the
`StatusEvents` role of base.py): one row per recipient state change a caller asked to be told
of, written by a trigger on recipients in the transaction that changes the state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EVENT_COLUMNS = (
    "id, recipient_id, message_id, url, receiver, client, state, number, route, server, line,"
    " error_code, error_meaning, at, attempts"
)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    id: int
    recipient_id: int
    message_id: str
    url: str
    receiver: str
    """scheme://host[:port] of `url`, lower-cased: the unit of back-off, caps and metrics."""
    client: str
    """Fingerprint of the API token the message was accepted with: picks the signing secret."""
    state: str
    number: str
    route: str | None
    server: str | None
    line: str | None
    error_code: str | None
    error_meaning: str | None
    at: float
    """When the state changed."""
    attempts: int
    """Deliveries tried before this one."""


def event_from_row(row: Sequence[Any]) -> StatusEvent:
    (id_, recipient_id, message_id, url, receiver, client, state, number) = row[:8]
    route, server, line, error_code, error_meaning, at, attempts = row[8:]
    return StatusEvent(
        int(id_),
        int(recipient_id),
        str(message_id),
        str(url),
        str(receiver),
        str(client),
        str(state),
        str(number),
        route,
        server,
        line,
        error_code,
        error_meaning,
        float(at),
        int(attempts),
    )
