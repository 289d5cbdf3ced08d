"""The ledger interface: every backend (SQLite, PostgreSQL) implements `Ledger`.

A recipient moves through these states, and ends in exactly one final state:

    queued ──claim──► dispatching ──ACCEPT──► submitted ──succeeded──► sent ──receipt──► delivered
       ▲                  │                      │                      │
       └──retry (line)────┴──────────────────────┘                      │
    queued/scheduled ──DELETE──► cancelled         any non-final ──► failed (recipient/content
                                                                     error, attempts exhausted,
                                                                     expired, report_timeout,
                                                                     server_removed)

`dispatching` is internal (shown as `submitted` by the API): the row says which server and line
were asked *before* the upstream call, so a crash inside that call is detectable afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from goipd.ledger.line_rate import LineReservation

T = TypeVar("T")


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
    duplicate_since: float | None = None
    """The flood guard: refuse the message if one of its numbers got the same text (and that
    recipient is not cancelled or failed) at or after this time. None: no check."""


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
    """False when an earlier message was returned instead: the one with the same idempotency
    key, or the one that makes this a duplicate (see `duplicate_number`)."""
    duplicate_number: str | None = None
    """Set when the flood guard refused the message: this number got the same text from
    `message` within the window (NewMessage.duplicate_since)."""


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


@dataclass(frozen=True, slots=True)
class LineQuarantine:
    """An operator's manual quarantine of one line: stored until released, no expiry."""

    server: str
    line: str
    reason: str | None
    since: float


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """What the instance polling an SMS Server last saw of it, for the other instances."""

    server: str
    owner: str
    """Instance id of the writer."""
    version: int
    """Bumped by every write: readers fetch only what changed."""
    taken_at: float
    body: str
    """JSON, see goipd/fleet/snapshot.py."""


class Ledger(Protocol):
    instance_id: str
    """Who this process is among goipd instances sharing the ledger: claims and leases carry
    it (goipd/fleet/ha.py)."""

    async def open(self) -> None:
        """Create/migrate the schema; raise LedgerError if the store is unusable."""

    async def close(self) -> None: ...

    @property
    def write_error(self) -> str | None:
        """Why the last group commit failed as a whole (disk full, read-only file, connection
        to PostgreSQL lost), None since one committed. One caller's rejected item does not
        count. /readyz answers 503 while it is set."""

    async def check_writes(self) -> str | None:
        """`write_error`, after trying a write of nothing but a transaction when it is set:
        without it a daemon taken out of service for failing writes would get no traffic to
        find out they work again."""

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        """Durable (fsync'd) before returning; concurrent callers share one commit. The
        idempotency key is looked up first, then the flood guard (`duplicate_since`), both in
        the transaction that stores the message: of two identical requests in flight together
        exactly one is stored."""

    async def get_message(self, message_id: str) -> Message | None: ...

    async def message_bodies(
        self, message_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        """message id → (text, route) of the messages that exist: what dispatch needs to send
        their recipients, in one read."""

    async def list_messages(
        self, state: State | None, since: float | None, limit: int, after: str | None
    ) -> list[Message]:
        """Newest first; `after` is the id of the last message of the previous page."""

    async def recent_duplicate(self, number: str, text: str, since: float) -> str | None:
        """Id of a message sent to `number` with the same text since `since`, if any."""

    async def cancel(
        self, message_id: str, now: float, handed_over: Sequence[int] = ()
    ) -> Message | None:
        """Cancel recipients still queued, and those of `handed_over` still `submitted` (a
        provider holding a scheduled send confirmed it cancelled them); None if the message
        does not exist."""

    async def due(self, now: float, limit: int) -> list[Recipient]:
        """Queued recipients whose time has come, oldest first."""

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        """queued → dispatching for those still queued; returns the ids actually claimed."""

    async def restamp_claims(self, recipient_ids: Sequence[int], now: float) -> None:
        """Move the claim time of this instance's `dispatching` recipients to `now`, right
        before their send starts: crash recovery looks for the send's task in a window that
        begins at the claim time and lasts two upstream timeouts (goipd/reports/reconcile.py)."""

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Apply outcomes; never moves a recipient backwards or out of a final state, except
        dispatching/submitted → queued for a retry."""

    async def find_by_task(self, server: str, task_id: str, number: str) -> Recipient | None: ...

    async def apply_to_task(
        self,
        server: str,
        task_id: str,
        number: str,
        now: float,
        decide: Callable[[Recipient], tuple[Outcome | None, T]],
    ) -> tuple[Recipient, T] | None:
        """find_by_task and record in one write: `decide` (pure, cheap; it may run in another
        thread, and again when the write it was batched with is redone) gets the recipient as
        it is in the transaction, after the reports queued before it, and returns the outcome
        to record (None: nothing) with anything the caller wants back. None if no recipient
        matches."""

    async def find_by_upstream(self, route: str, upstream_id: str) -> list[Recipient]:
        """Recipients a cloud provider knows by `upstream_id` (one id may cover a batch)."""

    async def in_state(self, state: State, older_than: float, limit: int) -> list[Recipient]:
        """Recipients in `state` whose last update is older than `older_than` (reconciliation)."""

    async def awaiting_report(
        self,
        route: str,
        sent_after: float,
        sent_before: float,
        limit: int,
        after: tuple[float, int] | None = None,
    ) -> list[Recipient]:
        """`sent` recipients of a cloud route whose sent_at lies in the window, oldest first:
        the ones whose delivery report is overdue but still worth asking for. `after` is the
        (sent_at, id) of the last one of the previous page: this page starts behind it."""

    async def max_task_id(self, server: str) -> int | None:
        """The highest GoIP task id recorded for `server` (task ids are integers)."""

    async def counts(self) -> dict[State, int]:
        """Recipients by state (for goipd_queue_messages)."""

    async def oldest_pending(self, now: float) -> float | None:
        """created_at of the oldest recipient not yet sent; a recipient of a scheduled message
        whose time has not come (queued, or handed over to a provider) is not backlog and does
        not count."""

    async def settle_handed_over(self, now: float) -> int:
        """`submitted` recipients of a cloud route whose message's send_at has come → `sent`
        (sent_at = send_at): a provider holding a scheduled send has sent it by then, and a
        delivery report may still move it on. Returns how many moved."""

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

    async def quarantine_line(
        self, server: str, line: str, reason: str | None, now: float
    ) -> LineQuarantine:
        """Store (or re-word) a manual quarantine; a repeat keeps the original `since`."""

    async def release_line(self, server: str, line: str) -> bool:
        """Delete a manual quarantine; False if there was none."""

    async def line_quarantines(self) -> list[LineQuarantine]:
        """Every stored manual quarantine, by server and line."""

    # --- several instances on one ledger (goipd/fleet/ha.py); PostgreSQL decides lease expiry by
    # its own clock, so the instances' clocks need not agree. ---------------------------------

    async def acquire_leases(self, wanted: Mapping[str, float]) -> set[str]:
        """Take or renew each lease name → ttl (seconds) for `instance_id`: a lease is taken
        when it is free, expired or already ours, atomically (of two instances asking at once,
        one gets it). Returns the names now held."""

    async def release_leases(self, names: Collection[str]) -> None:
        """Give up those of `names` that `instance_id` holds, so others take them at once."""

    async def put_fleet_snapshot(self, server: str, lease: str, body: str, now: float) -> bool:
        """Store `server`'s snapshot, only while `instance_id` holds `lease` (a deposed owner
        cannot overwrite its successor's); True if stored."""

    async def fleet_snapshots(self, known: Mapping[str, int]) -> list[FleetSnapshot]:
        """The snapshots of the servers in `known` whose version differs from the one given."""

    async def take_stale_claims(self, own_older_than: float, limit: int) -> list[Recipient]:
        """`dispatching` recipients nobody will finish: this instance's claims last updated
        before `own_older_than`, and every claim of an instance whose `instance:<id>` lease has
        expired (or that never had one). They become this instance's (so no other instance
        settles them too) and are returned, their `updated_at` still the claim time."""

    async def submitted_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        """`submitted` recipients of `servers` not updated since `older_than`, oldest first."""

    async def submitted_not_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        """`submitted` GoIP recipients whose server is none of `servers` (it was removed from
        the config), not updated since `older_than`, oldest first."""

    async def task_id_bounds(
        self, server: str, before: float, after: float
    ) -> tuple[int | None, int | None]:
        """GoIP task ids of `server` around a window: the highest among tasks recorded
        (submitted_at) before `before` and the lowest among those recorded after `after`."""

    async def recorded_task_ids(self, server: str, first: int, stop: int) -> set[int]:
        """The GoIP task ids in [first, stop) that some recipient of `server` carries."""

    async def reserve_line_sends(
        self,
        wanted: Mapping[tuple[str, str], int],
        per_minute: int,
        quotas: Mapping[tuple[str, str], tuple[int, float]] | None = None,
    ) -> LineReservation:
        """(server, line) → sends wanted now; returns how many each may make, atomically
        counted against `per_minute` over the sends of every instance in the last minute
        (this minute's count plus the previous minute's, weighted by what is left of it) and,
        for the lines in `quotas`, against (quota left, when a poll saw it) minus every
        instance's sends since that poll (line_rate.quota_grant)."""

    async def release_line_sends(self, unused: Mapping[tuple[str, str], int], minute: int) -> None:
        """Give back reserved sends that did not happen, so other instances may make them:
        `minute` is the reservation's (LineReservation.minute), the bucket they were counted
        in, even if a later minute has begun since."""
