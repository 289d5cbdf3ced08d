"""Row ↔ object mapping and ids shared by the ledger backends (column order is the contract)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any

from goipd.ledger.base import Message, Recipient, State

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RECIPIENT_COLUMNS = (
    "id, message_id, number, state, attempts, next_attempt_at, route, server, line, task_id, "
    "upstream_id, error_code, error_meaning, excluded_lines, created_at, updated_at, "
    "submitted_at, sent_at, delivered_at"
)
MESSAGE_COLUMNS = (
    "id, text, segments, encoding, route, idempotency_key, send_at, created_at, client"
)
PENDING = (State.QUEUED.value, State.DISPATCHING.value, State.SUBMITTED.value)


def new_message_id(now: float) -> str:
    """26 characters, Crockford base32: 48 bits of milliseconds, then 80 random bits. Sorting
    ids sorts messages by time; guessing one is hopeless."""
    value = (int(now * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipient_from_row(row: Sequence[Any]) -> Recipient:
    return Recipient(
        id=row[0],
        message_id=row[1],
        number=row[2],
        state=State(row[3]),
        attempts=row[4],
        next_attempt_at=row[5],
        route=row[6],
        server=row[7],
        line=row[8],
        task_id=row[9],
        upstream_id=row[10],
        error_code=row[11],
        error_meaning=row[12],
        excluded_lines=tuple(json.loads(row[13])),
        created_at=row[14],
        updated_at=row[15],
        submitted_at=row[16],
        sent_at=row[17],
        delivered_at=row[18],
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
    )
