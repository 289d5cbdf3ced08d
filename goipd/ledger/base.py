"""The ledger interface: every backend (SQLite, PostgreSQL) implements `Ledger`.

A recipient moves through these states, and ends in exactly one final state:

    queued ──claim──► dispatching ──ACCEPT──► submitted ──succeeded──► sent ──receipt──► delivered
       ▲                  │                      │                      │
       └──retry (line)────┴──────────────────────┘                      │
    queued/scheduled ──DELETE──► cancelled         any non-final ──► failed (recipient/content
                                                                     error, attempts exhausted,
                                                                     expired, report_timeout)

`dispatching` is internal (shown as `submitted` by the API): the row says which server and line
were asked *before* the upstream call, so a crash inside that call is detectable afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    SUBMITTED = "submitted"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({State.DELIVERED, State.FAILED, State.CANCELLED})
# `sent` is final for dispatch (no more sending) but a receipt may still move it to delivered.
RANK = {
    State.QUEUED: 0,
    State.DISPATCHING: 1,
    State.SUBMITTED: 2,
    State.SENT: 3,
    State.DELIVERED: 4,
    State.FAILED: 4,
    State.CANCELLED: 4,
}


class LedgerError(Exception):
    """The store cannot take a write (disk full, read-only, locked): the API answers 503."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    text: str
    recipients: Sequence[str]
    """E.164 numbers, already normalised and de-duplicated."""
    segments: int
    encoding: str
    route: str | None = None
    """Requested route as JSON text (validated by the API), or None for the routing rules."""
    idempotency_key: str | None = None
    send_at: float | None = None
    """Unix time before which nothing is sent (scheduled message)."""
    client: str = ""
    """Which API token (its short fingerprint, never the token) submitted it."""


@dataclass(frozen=True, slots=True)
class Recipient:
    id: int
    message_id: str
    number: str
    state: State
    attempts: int
    next_attempt_at: float
    route: str | None
    """"goip" or a cloud provider name, once chosen."""
    server: str | None
    line: str | None
    task_id: str | None
    upstream_id: str | None
    """Provider message id, or the GoIP sub-task id `<taskID>.<number>`."""
    error_code: str | None
    error_meaning: str | None
    excluded_lines: tuple[str, ...]
    """`server/line` pairs that already failed this recipient with a line error."""
    created_at: float
    updated_at: float
    submitted_at: float | None
    sent_at: float | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    text: str
    segments: int
    encoding: str
    route: str | None
    idempotency_key: str | None
    send_at: float | None
    created_at: float
    client: str
    recipients: tuple[Recipient, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class AcceptResult:
    message: Message
    created: bool
    """False when an earlier message with the same idempotency key was returned instead."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Dispatch's intent, written durably before the upstream call."""

    recipient_id: int
    route: str
    server: str | None
    line: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an upstream said about one recipient; applied with monotonic state rules."""

    recipient_id: int
    state: State
    task_id: str | None = None
    upstream_id: str | None = None
    error_code: str | None = None
    error_meaning: str | None = None
    retry_at: float | None = None
    """For state=QUEUED: when to try again."""
    exclude_line: str | None = None
    """For state=QUEUED after a line error: `server/line` to avoid next time."""


@dataclass(frozen=True, slots=True)
class InboundRecord:
    id: int
    source: str
    """GoIP server name or cloud provider."""
    line: str | None
    from_number: str
    to_number: str | None
    content: str
    received_at: float
    upstream_time: str
    """The sender's timestamp as it came (server local time for GoIP)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One inbound SMS still to be forwarded to one webhook URL (at-least-once)."""

    id: int
    inbound: InboundRecord
    url: str
    attempts: int


class Ledger(Protocol):
    async def open(self) -> None:
        """Create/migrate the schema; raise LedgerError if the store is unusable."""

    async def close(self) -> None: ...

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        """Durable (fsync'd) before returning; concurrent callers share one commit."""

    async def get_message(self, message_id: str) -> Message | None: ...

    async def list_messages(
        self, state: State | None, since: float | None, limit: int, after: str | None
    ) -> list[Message]:
        """Newest first; `after` is the id of the last message of the previous page."""

    async def recent_duplicate(self, number: str, text: str, since: float) -> str | None:
        """Id of a message sent to `number` with the same text since `since`, if any."""

    async def cancel(self, message_id: str, now: float) -> Message | None:
        """Cancel recipients still queued; None if the message does not exist."""

    async def due(self, now: float, limit: int) -> list[Recipient]:
        """Queued recipients whose time has come, oldest first."""

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        """queued → dispatching for those still queued; returns the ids actually claimed."""

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Apply outcomes; never moves a recipient backwards or out of a final state, except
        dispatching/submitted → queued for a retry."""

    async def find_by_task(self, server: str, task_id: str, number: str) -> Recipient | None: ...

    async def find_by_upstream(self, route: str, upstream_id: str) -> list[Recipient]:
        """Recipients a cloud provider knows by `upstream_id` (one id may cover a batch)."""

    async def in_state(self, state: State, older_than: float, limit: int) -> list[Recipient]:
        """Recipients in `state` whose last update is older than `older_than` (reconciliation)."""

    async def max_task_id(self, server: str) -> int | None:
        """The highest GoIP task id recorded for `server` (task ids are integers)."""

    async def counts(self) -> dict[State, int]:
        """Recipients by state (for goipd_queue_messages)."""

    async def oldest_pending(self, now: float) -> float | None:
        """created_at of the oldest recipient not yet sent; a scheduled recipient whose time
        has not come is not backlog and does not count."""

    async def add_inbound(
        self,
        source: str,
        line: str | None,
        from_number: str,
        to_number: str | None,
        content: str,
        upstream_time: str,
        now: float,
        forward_to: Sequence[str] = (),
    ) -> int:
        """Durable before returning, together with one outbox row per `forward_to` URL;
        returns the inbound id."""

    async def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        """Outbox rows not done whose next attempt time has come, with their inbound SMS."""

    async def outbox_result(
        self, item_id: int, *, done: bool, retry_at: float | None, error: str | None, now: float
    ) -> None:
        """done → row finished; else attempts+1 and retry at `retry_at` (None = give up: the
        row is finished, keeping `error`)."""

    async def list_inbound(self, limit: int, before_id: int | None) -> list[InboundRecord]: ...
