"""The ledger's interface, split by role: each component is typed against the role it uses,
and both backends (SQLite, PostgreSQL) implement all of them as `Ledger`.

The states a recipient moves through are in goipd/model.py.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from goipd.ledger.events import StatusEvent
from goipd.ledger.held import HeldKey, HeldReport
from goipd.ledger.line_rate import LineReservation
from goipd.ledger.shared import AutoQuarantine, ProviderDisable
from goipd.ledger.upkeep import LineBalance, Remediation
from goipd.model import (
    AcceptResult,
    Claim,
    FleetSnapshot,
    GoipInbound,
    InboundRecord,
    LineQuarantine,
    Message,
    NewMessage,
    OutboxItem,
    Outcome,
    Recipient,
    State,
)

T = TypeVar("T")


class Store(Protocol):
    """The store itself: opened, closed, and whether it takes writes (/readyz)."""

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


class Accepting(Protocol):
    """Taking new messages in: the one write the API acknowledges."""

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        """Durable (fsync'd) before returning; concurrent callers share one commit. The
        idempotency key is looked up first, then the flood guard (`duplicate_since`), both in
        the transaction that stores the message: of two identical requests in flight together
        exactly one is stored."""

    async def recent_duplicate(self, number: str, text: str, since: float) -> str | None:
        """Id of a message sent to `number` with the same text since `since`, if any."""


class Reading(Protocol):
    """What the API shows and changes on request: messages, their cancellation, queue figures."""

    async def get_message(self, message_id: str) -> Message | None: ...

    async def list_messages(
        self, state: State | None, since: float | None, limit: int, after: str | None
    ) -> list[Message]:
        """Newest first; `after` is the id of the last message of the previous page."""

    async def cancel(
        self, message_id: str, now: float, handed_over: Sequence[int] = ()
    ) -> Message | None:
        """Cancel recipients still queued, and those of `handed_over` still `submitted` (a
        provider holding a scheduled send confirmed it cancelled them); None if the message
        does not exist."""

    async def counts(self) -> dict[State, int]:
        """Recipients by state (for goipd_queue_messages)."""

    async def oldest_pending(self, now: float) -> float | None:
        """created_at of the oldest recipient not yet sent; a recipient of a scheduled message
        whose time has not come (queued, or handed over to a provider) is not backlog and does
        not count."""


class Recording(Protocol):
    """Applying outcomes with the monotonic state rules (goipd/ledger/rules.py)."""

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Apply outcomes; never moves a recipient backwards or out of a final state, except
        dispatching/submitted → queued for a retry."""


class Dispatching(Recording, Protocol):
    """Dispatch: due recipients, claims written before the upstream call, shared line rate."""

    async def due(self, now: float, limit: int) -> list[Recipient]:
        """Queued recipients whose time has come: highest priority first, then oldest first."""

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        """queued → dispatching for those still queued and not past their validity
        (expires_at); returns the ids actually claimed."""

    async def expire(self, now: float, limit: int) -> int:
        """queued → expired for up to `limit` recipients whose validity ended by `now`; returns
        how many."""

    async def restamp_claims(self, recipient_ids: Sequence[int], now: float) -> None:
        """Move the claim time of this instance's `dispatching` recipients to `now`, right
        before their send starts: crash recovery looks for the send's task in a window that
        begins at the claim time and lasts two upstream timeouts (goipd/reports/reconcile.py)."""

    async def message_bodies(
        self, message_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        """message id → (text, route) of the messages that exist: what dispatch needs to send
        their recipients, in one read."""

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


class Reporting(Recording, Protocol):
    """Report application and reconciliation: finding the recipient a report or a query is about."""

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

    async def settle_handed_over(self, now: float) -> int:
        """`submitted` recipients of a cloud route whose message's send_at has come → `sent`
        (sent_at = send_at): a provider holding a scheduled send has sent it by then, and a
        delivery report may still move it on. Returns how many moved."""

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

    async def progress_since(self, server: str, reported_after: float, handed_after: float) -> bool:
        """Whether a report since `reported_after` moved on one of the sends `server` took
        since `handed_after` (sent, or failed with the server's own error code): its engine
        works. `handed_after` bounds the recipients looked at."""

    async def abandon_tasks(
        self, server: str, abandoned: Sequence[Recipient], kind: str, now: float
    ) -> None:
        """Remember the tasks of `abandoned`: recipients goipd fails (`kind` failed) or moves
        to another route (moved) while `server` still holds their task, so a later report of
        one sent is counted. Kept two days (the engine sends nothing older than one)."""

    async def late_send(self, server: str, task_id: str, number: str) -> tuple[int, str] | None:
        """An abandoned task reported sent: its recipient id and kind, the first time only."""

    async def task_id_bounds(
        self, server: str, before: float, after: float
    ) -> tuple[int | None, int | None]:
        """GoIP task ids of `server` around a window: the highest among tasks recorded
        (submitted_at) before `before` and the lowest among those recorded after `after`."""

    async def recorded_task_ids(self, server: str, first: int, stop: int) -> set[int]:
        """The GoIP task ids in [first, stop) that some recipient of `server` carries."""


class InboundStore(Protocol):
    """Inbound SMS and their forwarding outbox (at least once)."""

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

    async def add_goip_inbound(
        self, sms: GoipInbound, now: float, forward_to: Sequence[str] = ()
    ) -> tuple[int, bool]:
        """Store an SMS of a GoIP SMS Server unless the ledger holds it already, atomically
        (a push and an inbox read of one SMS may race on two instances). Returns its inbound
        id and whether it was stored now (then with its outbox rows).

        The same SMS is a row of the same server with the same number, text and server time:
        a push (no inbox id) matches a row read from the inbox that no push matched yet; an
        inbox row matches the row holding its inbox id, else a pushed row no inbox row matched
        yet. Each row is matched at most once each way, so identical SMS keep their count."""

    async def inbox_watermark(self, server: str) -> str | None:
        """The server time back to which `server`'s inbox was last read completely."""

    async def set_inbox_watermark(self, server: str, received: str, now: float) -> None: ...


class Coordination(Protocol):
    """Several instances on one ledger (goipd/fleet/ha.py) and the manual quarantines they share.
    PostgreSQL decides lease expiry by its own clock, so the instances' clocks need not agree."""

    instance_id: str
    """Who this process is among goipd instances sharing the ledger: claims and leases carry
    it (goipd/fleet/ha.py)."""

    async def quarantine_line(
        self, server: str, line: str, reason: str | None, now: float
    ) -> LineQuarantine:
        """Store (or re-word) a manual quarantine; a repeat keeps the original `since`."""

    async def release_line(self, server: str, line: str) -> bool:
        """Delete a manual quarantine; False if there was none."""

    async def line_quarantines(self) -> list[LineQuarantine]:
        """Every stored manual quarantine, by server and line."""

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


class HeldStore(Protocol):
    """Cloud delivery reports held until their send is recorded, and when failed hand-overs of
    scheduled cloud sends may be tried again (goipd/ledger/held.py; bounds there). Every
    instance on the ledger retries held reports: each try of one is taken by one instance."""

    async def hold_report(self, report: HeldReport, limit: int) -> tuple[bool, list[HeldReport]]:
        """Store `report`, durable before returning. One already held with the same key keeps
        its row, age and retry times; only its status (state, code, meaning) becomes the new
        one. Beyond `limit` rows the oldest (held_at) give way, each deleted by one caller.
        Returns whether `report` is new, and the reports deleted for it."""

    async def held_reports_summary(self) -> tuple[int, float | None, float | None]:
        """(reports held, the earliest next_try, the earliest held_at): one read, so a retry
        round with nothing due writes nothing."""

    async def take_held_reports(
        self, now: float, keep_for: float, take_for: float, limit: int
    ) -> tuple[list[HeldReport], list[HeldReport]]:
        """(taken, expired). Deletes and returns every report held since before
        `now - keep_for`; of the others whose next_try has come, takes up to `limit`, earliest
        first: their next_try becomes `now + take_for` (as returned), so no other instance
        tries them meanwhile, and of two instances taking at once each gets other reports."""

    async def settle_held_reports(
        self, matched: Collection[HeldKey], again: Sequence[tuple[HeldKey, float, float]]
    ) -> None:
        """After a try: delete the `matched` reports; the others get (key, next_try, wait)."""

    async def handover_retries(
        self, recipient_ids: Collection[int]
    ) -> dict[int, tuple[int, float]]:
        """recipient id → (attempts, retry time) of those of `recipient_ids` whose hand-over
        failed: the hand-over may be tried again from that time, while the recipient's
        attempts are still these (any claim since makes the row void)."""

    async def set_handover_retries(
        self, retries: Mapping[int, tuple[int, float]], now: float, keep_for: float, limit: int
    ) -> None:
        """Store recipient id → (attempts, retry time), replacing an earlier one. The same
        write deletes the rows of no more use: retry times over `keep_for` past, passed ones
        void (the recipient's attempts moved on, or it is no longer queued or dispatching),
        and beyond `limit` rows those with the earliest retry times."""

    async def clear_handover_retries(self, recipient_ids: Collection[int]) -> None:
        """Delete the rows of these recipients (their hand-over was taken or failed for good)."""


class ProviderDocuments(Protocol):
    """Small per-provider documents that outlive the process (c123's reply recovery plan):
    one text (JSON) per provider and name, versioned, so that an instance whose job ran on
    after another took the provider's lease over cannot overwrite what that one wrote since.
    At most MAX_DOCUMENT_CHARS each (goipd/ledger/documents_sqlite.py); there is one row per
    provider and name the code uses, so the table cannot grow beyond that."""

    async def provider_document(self, provider: str, name: str) -> tuple[str, int] | None:
        """The body of `provider`'s document `name` and its version (1 after the first write,
        one more after each), None when there is none."""

    async def put_provider_document(
        self, provider: str, name: str, body: str, version: int, now: float
    ) -> int | None:
        """Replace the document if it is still at `version` (0: there is none yet), durably,
        in one statement; returns its new version, or None when another writer changed it
        since (nothing written: read it again). Of two writers from one version, one wins.
        A body longer than MAX_DOCUMENT_CHARS raises ValueError (nothing written)."""


class SharedRouting(Protocol):
    """Quarantines after line errors and providers disabled after credential or credit
    refusals, shared by every instance on the ledger: each instance writes what it decides and
    reads the whole of both every few seconds (goipd/fleet/quarantine.py,
    goipd/dispatch/disables.py). Bounds: goipd/ledger/shared.py."""

    async def put_auto_quarantine(self, quarantine: AutoQuarantine, now: float) -> None:
        """Store a line's quarantine after line errors. A quarantine stored for the line with
        a later `until` is kept instead (of two instances quarantining a line at once, the
        later end holds); one whose `until` has passed is replaced. Deletes the quarantines
        whose `until` is `now` or earlier."""

    async def release_auto_quarantine(self, server: str, line: str, now: float) -> bool:
        """Delete the line's quarantine after line errors (an operator ended it early); True
        if one was stored and still running at `now`."""

    async def auto_quarantines(self, now: float) -> list[AutoQuarantine]:
        """The quarantines after line errors still running at `now`, by server and line."""

    async def disable_provider(self, disable: ProviderDisable) -> ProviderDisable:
        """Store that a provider is out of routing. A provider already stored keeps its
        `since` and takes the new code and probe time (a refused probe, or a refusal another
        instance saw too); returns what is stored."""

    async def enable_providers(self, providers: Collection[str] | None = None) -> list[str]:
        """Delete the disables of `providers` (None: of every provider, as a reload does);
        returns the providers that were disabled, sorted."""

    async def provider_disables(self) -> list[ProviderDisable]:
        """Every stored provider disable, by provider."""


class AlertPages(Protocol):
    """Alertmanager notifications already paged, across restarts and instances
    (goipd/accept/alerts.py). A page is keyed by (receiver, groupKey, status) and stamped with
    the claiming instance's clock: instances' clocks should agree to well within the window
    (NTP); a skew only moves the window's end by as much."""

    async def claim_alert_page(
        self, receiver: str, group_key: str, status: str, now: float, window: float
    ) -> str | None:
        """Admits and records a page in one atomic step, so of instances claiming the same
        notification at once exactly one gets it. None: claimed, stamped `now` with no message
        id yet (`record_alert_page` or `release_alert_page` must follow). Otherwise the key was
        paged within `window` seconds of `now`: that page's message id, "" while its message is
        being stored. A claim left without a message id (its process died before storing the
        SMS) stops counting after pages_sqlite.UNRECORDED_PAGE_KEEP seconds, and one stamped a
        window or more after `now` (a clock stepped back) does not count. Also forgets pages
        older than `window` and all but the newest pages_sqlite.MAX_PAGES."""

    async def record_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float, message_id: str
    ) -> None:
        """The claim stamped `paged_at` stored its SMS as `message_id`; nothing if that claim is
        gone (released, forgotten, or taken over after UNRECORDED_PAGE_KEEP)."""

    async def release_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float
    ) -> None:
        """Undo the claim stamped `paged_at`, still without a message id: its SMS was not
        stored, and the same notification may page again at once."""


class StatusEvents(Protocol):
    """Status callback events (goipd/callbacks/), one per recipient state change its message
    asked to be told about: written by a trigger in the transaction that changes the state
    (so no code path misses one), delivered at least once, by every instance on the ledger.
    `receiver` is the event URL's scheme://host[:port], lower-cased."""

    async def take_status_events(
        self,
        now: float,
        claim_for: float,
        limit: int,
        per_receiver: int,
        skip_receivers: Collection[str] = (),
    ) -> list[StatusEvent]:
        """Claim for `instance_id` until `now + claim_for` up to `limit` events that are due
        (next_at <= now) and not claimed by anyone (or whose claim ran out), at most
        `per_receiver` of each receiver and none of `skip_receivers`, earliest due first.
        Of two instances taking at once, each gets other events."""

    async def settle_status_events(
        self, finished: Collection[int], retries: Sequence[tuple[int, float, str]] = ()
    ) -> None:
        """Delete the `finished` events (delivered, or dropped); each of `retries` is
        (id, next_at, error): one more attempt counted, due again at next_at, unclaimed."""

    async def release_status_events(self) -> int:
        """Unclaim the events `instance_id` holds (left by this instance's previous process):
        they are taken again at once rather than after their claim runs out. Returns how many."""

    async def expire_status_events(self, before: float, now: float) -> dict[str, int]:
        """Delete the events of state changes before `before`, but those being delivered
        (claimed until after `now`: their delivery settles them); receiver → events deleted."""

    async def cap_status_events(self, per_receiver: int, now: float) -> dict[str, int]:
        """Delete each receiver's oldest events beyond its newest `per_receiver`, but those
        being delivered (claimed until after `now`); receiver → events deleted."""

    async def status_events_pending(self) -> dict[str, int]:
        """receiver → events stored (claimed or not)."""


class Receiving(Reporting, InboundStore, Protocol):
    """What comes back from upstreams: reports on sends, and inbound SMS."""


class LineUpkeep(Protocol):
    """What goipd learns of SIMs and does to their modules (goipd/fleet/balances.py,
    remediation.py): balances outlive a restart, and instances on one ledger never reboot one
    line twice for one incident."""

    async def record_balance(
        self, server: str, line: str, balance: float, answer: str, now: float
    ) -> None:
        """A balance read: kept with the answer it was read from; clears a read error."""

    async def record_balance_error(
        self, server: str, line: str, reason: str, error: str, now: float
    ) -> None:
        """A read that failed: the last good balance stays, with this error beside it."""

    async def line_balances(self) -> list[LineBalance]: ...

    async def start_remediation(
        self,
        server: str,
        line: str,
        incident: str,
        incident_since: float,
        action: str,
        now: float,
        *,
        cooldown: float,
        max_per_server: int,
    ) -> Remediation | None:
        """Record that this instance takes `action` on the line for the incident that began at
        `incident_since`, atomically, unless one was recorded for that incident (by any
        instance), one of the line's began within `cooldown`, or `max_per_server` of the
        server's are pending; None when it must not act."""

    async def finish_remediation(
        self,
        server: str,
        line: str,
        incident_since: float,
        result: str,
        detail: str | None,
        now: float,
    ) -> bool:
        """A pending remediation's result; False when it was not pending (any more)."""

    async def remediations(self, since: float) -> list[Remediation]:
        """Remediations begun since `since`, and every pending one, oldest first."""


class Ledger(
    Store,
    Accepting,
    Reading,
    Dispatching,
    Reporting,
    InboundStore,
    Coordination,
    HeldStore,
    ProviderDocuments,
    SharedRouting,
    AlertPages,
    StatusEvents,
    LineUpkeep,
    Protocol,
):
    """Every role: what a backend implements. Components are typed against the roles they use."""
