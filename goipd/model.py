"""Domain types every stage shares; this module imports nothing of goipd.

A recipient moves through these states, and ends in exactly one final state:

    queued ──claim──► dispatching ──ACCEPT──► submitted ──succeeded──► sent ──receipt──► delivered
       ▲                  │                      │                      │
       └──retry (line)────┴──────────────────────┘                      │
    queued/scheduled ──DELETE──► cancelled         any non-final ──► failed (recipient/content
                                                                     error, attempts exhausted,
                                                                     report_timeout,
                                                                     server_removed)
    queued/dispatching ──validity ended (expires_at, routing.max_queue_age)──► expired

`dispatching` is internal (shown as `submitted` by the API): the row says which server and line
were asked *before* the upstream call, so a crash inside that call is detectable afterwards.
`expired` is reached only before an upstream was asked: a recipient handed over is never
expired, whatever becomes of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    SUBMITTED = "submitted"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


PUBLIC_STATES = tuple(state.value for state in State if state is not State.DISPATCHING)
"""A recipient's states as the API shows them: dispatching is shown as submitted."""
FINAL_STATES = frozenset({State.DELIVERED, State.FAILED, State.CANCELLED, State.EXPIRED})
# `sent` is final for dispatch (no more sending) but a receipt may still move it to delivered.
RANK = {
    State.QUEUED: 0,
    State.DISPATCHING: 1,
    State.SUBMITTED: 2,
    State.SENT: 3,
    State.DELIVERED: 4,
    State.FAILED: 4,
    State.CANCELLED: 4,
    State.EXPIRED: 4,
}
PRIORITIES = range(4)
"""Message priorities, lowest first: 0 bulk, 1 normal (the default), 2 high, 3 urgent."""
NORMAL_PRIORITY = 1
USSD_CODE = re.compile(r"[0-9*#+]{1,64}")
"""What a USSD code is made of (config and the USSD client agree on it): `$` and `?` would start
the SMS Server's recharge-card feature."""
USSD_CODE_RULE = "a USSD code is 1 to 64 of 0-9 * # +"
EXPIRED_CODE = "validity"
EXPIRED_MEANING = "not handed to an upstream before the message's validity ended"


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
    priority: int = NORMAL_PRIORITY
    expires_at: float | None = None
    """Unix time after which a recipient not yet handed to an upstream expires unsent."""
    status_url: str | None = None
    """Where the recipients' state changes are POSTed (goipd/callbacks/)."""
    status_events: str | None = None
    """The states to report there, comma-separated (e.g. "sent,delivered,failed")."""


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
    expires_at: float | None = None
    """Its message's validity end: not handed to an upstream by then, it expires."""
    priority: int = NORMAL_PRIORITY
    """Its message's priority."""


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
    priority: int = NORMAL_PRIORITY
    expires_at: float | None = None
    status_url: str | None = None
    status_events: str | None = None


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
    """For state=QUEUED after a line error: `server/line` to avoid next time (whole_server:
    every line of the server)."""
    if_state: State | None = None
    """Apply only while the recipient is still in this state, the one it was decided on: a
    recipient parked as queued must not undo another instance's claim made meanwhile. None:
    the state rules alone decide."""


def whole_server(server: str) -> str:
    """The exclusion key of every line of `server`: a send there lost its answer, so the
    server, not one of its lines, is what failed."""
    return f"{server}/*"


@dataclass(frozen=True, slots=True)
class GoipInbound:
    """An inbound SMS as a GoIP SMS Server reported it: pushed (no inbox id; the server
    pushes each SMS once) or read from its web inbox (with the inbox's own row id)."""

    server: str
    line: str | None
    """The line's name as the server gave it; None when the push said null (the line was
    renamed or deleted)."""
    from_number: str
    content: str
    upstream_time: str
    """When the server received it, its local time as it wrote it ('YYYY-MM-DD hh:mm:ss')."""
    inbox_id: int | None = None


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
