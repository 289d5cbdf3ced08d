"""Status callback events: which states are reported, and the JSON that is POSTed
(docs/status-callbacks.md). Pure functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from goipd.config import DEFAULT_STATUS_EVENTS, STATUS_EVENT_STATES
from goipd.ledger.events import StatusEvent

EVENT_STATES: tuple[str, ...] = STATUS_EVENT_STATES
"""The states a caller may ask to be told about, in the order they happen (the internal
`dispatching` never is: the API shows it as `submitted`)."""
DEFAULT_EVENTS: tuple[str, ...] = DEFAULT_STATUS_EVENTS
"""Reported when a caller gives a status_url but no status_events: every outcome, and `sent`."""
GOIP_ROUTE = "goip"


def event_id(event: StatusEvent) -> str:
    """Stable across retries and restarts: what receivers de-duplicate by."""
    return f"evt_{event.id}"


def rfc3339(at: float) -> str:
    """UTC with milliseconds and a Z, e.g. 2027-01-15T08:00:00.123Z."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_payload(event: StatusEvent) -> dict[str, Any]:
    """The JSON object of one delivery attempt of `event`."""
    cloud = event.route is not None and event.route != GOIP_ROUTE
    return {
        "id": event_id(event),
        "type": f"recipient.{event.state}",
        "message_id": event.message_id,
        "to": event.number,
        "state": event.state,
        "route": event.route,
        "server": event.server,
        "line": event.line,
        "provider": event.route if cloud else None,
        "error": (
            {"code": event.error_code, "meaning": event.error_meaning} if event.error_code else None
        ),
        "at": rfc3339(event.at),
        "attempt": event.attempts + 1,
    }


def event_body(event: StatusEvent) -> bytes:
    """The exact bytes sent and signed (compact, keys in a fixed order)."""
    return json.dumps(event_payload(event), separators=(",", ":"), ensure_ascii=False).encode()
