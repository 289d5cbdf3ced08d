"""Row ↔ object mapping and ids shared by the ledger backends (column order is the contract)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from goipd.model import Message, NewMessage, Recipient, State

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RECIPIENT_COLUMNS = (
    "id, message_id, number, state, attempts, next_attempt_at, route, server, line, task_id, "
    "upstream_id, error_code, error_meaning, excluded_lines, created_at, updated_at, "
    "submitted_at, sent_at, delivered_at, expires_at, priority"
)
MESSAGE_COLUMNS = (
    "id, text, segments, encoding, route, idempotency_key, send_at, created_at, client, "
    "priority, expires_at, status_url, status_events"
)
PENDING = (State.QUEUED.value, State.DISPATCHING.value, State.SUBMITTED.value)


def new_message_id(now: float) -> str:
    """26 characters, Crockford base32: 48 bits of milliseconds, then 80 random bits. Sorting
    ids sorts messages by time; guessing one is hopeless."""
    return crockford26((int(now * 1000) << 80) | secrets.randbits(80))


_CROCKFORD_PAIRS = [high + low for high in CROCKFORD for low in CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -10, -10))


def crockford26(value: int) -> str:
    """The low 130 bits of `value` as 26 Crockford base32 digits, most significant first."""
    # Two digits (10 bits) per step from a table: half the time of a digit-by-digit loop,
    # which was 2.5% of an accept's CPU.
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def message_row(message_id: str, new: NewMessage, now: float) -> tuple[Any, ...]:
    """The `messages` row of a new message, in MESSAGE_COLUMNS order (as `message_from_row`
    reads it back)."""
    return (
        message_id,
        new.text,
        new.segments,
        new.encoding,
        new.route,
        new.idempotency_key,
        new.send_at,
        now,
        new.client,
        new.priority,
        new.expires_at,
        new.status_url,
        new.status_events,
    )


def storable(text: str) -> str:
    """`text` as every backend stores it. PostgreSQL text cannot hold U+0000 (the statement
    fails, and an inbound SMS with it would be lost), so NUL becomes U+FFFD; SQLite could keep
    it but does the same, so a message reads back alike whichever backend holds it."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def task_key(server: str, task_id: str, number: str) -> tuple[str, str, str, str]:
    """(server, task_id, number, +number) as stored, for finding a recipient by a GoIP report:
    the SMS Server echoes the number with or without the leading "+"."""
    server, task_id, number = storable(server), storable(task_id), storable(number)
    return server, task_id, number, number if number.startswith("+") else f"+{number}"


def storable_or_none(text: str | None) -> str | None:
    return None if text is None else storable(text)


def storable_message(message: NewMessage) -> NewMessage:
    # Every accept passes here, with up to thousands of numbers: copy only when needed.
    fields = (message.text, message.route or "", message.idempotency_key or "", message.client)
    # A number that is not text is left for the database to refuse, as that caller's error.
    if not any("\x00" in value for value in fields) and not any(
        isinstance(n, str) and "\x00" in n for n in message.recipients
    ):
        return message
    return replace(
        message,
        text=storable(message.text),
        recipients=[storable(n) if isinstance(n, str) else n for n in message.recipients],
        route=storable_or_none(message.route),
        idempotency_key=storable_or_none(message.idempotency_key),
        client=storable(message.client),
    )


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


STATE_OF = {state.value: state for state in State}
"""A dict lookup instead of State(value): every recipient read goes through it."""


def recipient_from_row(row: Sequence[Any]) -> Recipient:
    return Recipient(
        id=row[0],
        message_id=row[1],
        number=row[2],
        state=STATE_OF[row[3]],
        attempts=row[4],
        next_attempt_at=row[5],
        route=row[6],
        server=row[7],
        line=row[8],
        task_id=row[9],
        upstream_id=row[10],
        error_code=row[11],
        error_meaning=row[12],
        excluded_lines=() if row[13] == "[]" else tuple(json.loads(row[13])),
        created_at=row[14],
        updated_at=row[15],
        submitted_at=row[16],
        sent_at=row[17],
        delivered_at=row[18],
        expires_at=row[19],
        priority=row[20],
    )


def queued_recipient(
    recipient_id: int,
    message_id: str,
    number: str,
    start: float,
    now: float,
    priority: int,
    expires_at: float | None,
) -> Recipient:
    """A recipient as an accept stores it, made without reading it back (`recipient_from_row`
    would read it so)."""
    return Recipient(
        id=recipient_id,
        message_id=message_id,
        number=number,
        state=State.QUEUED,
        attempts=0,
        next_attempt_at=start,
        route=None,
        server=None,
        line=None,
        task_id=None,
        upstream_id=None,
        error_code=None,
        error_meaning=None,
        excluded_lines=(),
        created_at=now,
        updated_at=now,
        submitted_at=None,
        sent_at=None,
        delivered_at=None,
        expires_at=expires_at,
        priority=priority,
    )


def message_from_row(row: Sequence[Any], recipients: Sequence[Recipient]) -> Message:
    return Message(
        id=row[0],
        text=row[1],
        segments=row[2],
        encoding=row[3],
        route=row[4],
        idempotency_key=row[5],
        send_at=row[6],
        created_at=row[7],
        client=row[8],
        recipients=tuple(recipients),
        priority=row[9],
        expires_at=row[10],
        status_url=row[11],
        status_events=row[12],
    )
