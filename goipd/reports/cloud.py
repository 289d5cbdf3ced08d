"""Cloud delivery statuses, pushed (DLR hooks) or queried (status API), applied to the ledger.

Both ways go through `apply_status`, so a status has the same effect whichever way it arrives
and applying it twice changes nothing (the ledger never moves a recipient backwards or out of a
final state). A report that arrives before its send is recorded is held in the ledger and
tried again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from goipd.ledger.base import HeldStore, Receiving
from goipd.ledger.held import HeldKey, HeldReport
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError, Outcome, Recipient, State
from goipd.upstream.cloud import CloudStatus

log = structlog.get_logger("goipd.reports")


HELD_LIMIT = 10_000
"""Reports held at most, by all instances on the ledger together: beyond, the oldest give way
(goipd_cloud_reports_held_total{outcome="overflow"})."""
HELD_FOR = 600.0
"""Seconds a report is held: a send's answer is recorded within seconds, so one unmatched after
this names a send goipd did not make (or lost the answer of)."""
HELD_RETRY = 1.0
"""Seconds between retry rounds, and between the first tries of a report."""
HELD_MAX_RETRY = 16.0
"""Seconds between the tries of a report at most, once HELD_EAGER has passed."""
HELD_EAGER = 30.0
"""Seconds a report is tried every HELD_RETRY; after that the wait doubles."""
HELD_TAKE = 30.0
"""Seconds a report taken for a try is that instance's alone: the try takes milliseconds, and
if the instance dies during it another tries the report once this has passed."""
HELD_BATCH = 500
"""Reports taken for one round at most."""


@dataclass
class CloudContext:
    """What applying statuses and inbound SMS needs from the daemon."""

    ledger: Receiving
    metrics: Metrics
    forward_urls: Callable[[], tuple[str, ...]]
    clock: Callable[[], float] = time.time


async def apply_status(
    ctx: CloudContext, provider: str, status: CloudStatus, *, log_unmatched: bool = True
) -> str:
    """Apply one delivery status (pushed or queried). Returns ok / unknown_task."""
    recipients = _matching(
        await ctx.ledger.find_by_upstream(provider, status.upstream_id), status.number
    )
    if not recipients:
        if log_unmatched:
            log.info("report_unmatched", provider=provider, upstream_id=status.upstream_id)
        return "unknown_task"
    if status.state not in (State.DELIVERED, State.FAILED):
        return "ok"  # still pending at the provider: nothing to record
    changed = [r for r in recipients if r.state in (State.DISPATCHING, State.SUBMITTED, State.SENT)]
    if not changed:
        return "ok"  # already final: a repeated or late report
    now = ctx.clock()
    await ctx.ledger.record(
        [
            Outcome(
                r.id,
                status.state,
                error_code=status.code if status.state is State.FAILED else None,
                error_meaning=status.meaning if status.state is State.FAILED else None,
            )
            for r in changed
        ],
        now,
    )
    if status.state is State.DELIVERED:
        ctx.metrics.sms_delivered.labels(provider, "", "").inc(len(changed))
    else:
        ctx.metrics.sms_undelivered.labels(provider).inc(len(changed))
    log.info(
        "report_applied",
        provider=provider,
        upstream_id=status.upstream_id,
        recipients=len(changed),
        state=status.state.value,
        code=status.code,
    )
    return "ok"


class HeldReports:
    """Delivery reports that arrived before goipd recorded the message id they name.

    A provider may push its report while dispatch is still writing the send's answer (the
    provider id) to the ledger: matched at once, such a report would find nobody and be lost.
    It is stored in the ledger instead (table `held_reports`) before the provider is answered,
    and matched again until the id is recorded or `keep_for` passes: so a restart, or the
    death of the instance that received it, loses nothing. At most `limit` are held (the
    oldest give way); a repeat of one held keeps its row.

    Every instance on the ledger runs the retry rounds. Each try of a report is taken in the
    ledger by one instance for HELD_TAKE seconds (a try takes milliseconds), so two instances
    do not apply one report together and the delivered/undelivered counters move once; when
    the instance that took a report dies during its try, another tries it once HELD_TAKE has
    passed.
    """

    def __init__(
        self,
        ctx: CloudContext,
        store: HeldStore,
        *,
        limit: int = HELD_LIMIT,
        keep_for: float = HELD_FOR,
        take_for: float = HELD_TAKE,
        batch: int = HELD_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.limit = limit
        self.keep_for = keep_for
        self.take_for = take_for
        self.batch = batch
        self.clock = clock
        """Wall-clock seconds: the times are stored, read after a restart and by other
        instances (whose clocks are assumed NTP-synchronised)."""
        self._count = 0

    def __len__(self) -> int:
        """Reports held, as this instance last counted them: each retry round reads the number
        in the ledger, and what this instance holds or matches counts at once."""
        return self._count

    async def apply(self, provider: str, status: CloudStatus) -> str:
        """apply_status for a pushed report; one that matches nobody yet is held ("held"),
        durably before this returns (the provider is answered after it, and a LedgerError
        leaves it unanswered, so it pushes again)."""
        outcome = await apply_status(self.ctx, provider, status)
        if outcome != "unknown_task" or status.state not in (State.DELIVERED, State.FAILED):
            return outcome  # a pending status is not worth holding: nothing would be recorded
        now = self.clock()
        report = HeldReport(
            provider,
            status.upstream_id,
            status.number,
            status.state,
            status.code,
            status.meaning,
            held_at=now,
            next_try=now + HELD_RETRY,
            wait=HELD_RETRY,
        )
        new, dropped = await self.store.hold_report(report, self.limit)
        for old in dropped:
            self.ctx.metrics.cloud_reports_held.labels(old.provider, "overflow").inc()
            log.warning(
                "report_hold_overflowed", provider=old.provider, upstream_id=old.upstream_id
            )
        if new:
            # A repeat keeps the first arrival's row and age, and is not counted again.
            self.ctx.metrics.cloud_reports_held.labels(provider, "held").inc()
            log.info("report_held", provider=provider, upstream_id=status.upstream_id)
            self._count = max(self._count + 1 - len(dropped), 0)
        return "held"

    async def retry_once(self) -> None:
        """Match every held report that is due again; apply, expire or keep each. One read when
        nothing is due."""
        now = self.clock()
        self._count, next_try, oldest = await self.store.held_reports_summary()
        if (next_try is None or next_try > now) and (
            oldest is None or oldest >= now - self.keep_for
        ):
            return
        taken, expired = await self.store.take_held_reports(
            now, self.keep_for, self.take_for, self.batch
        )
        for held in expired:
            self.ctx.metrics.cloud_reports_held.labels(held.provider, "expired").inc()
            log.warning("report_hold_expired", provider=held.provider, upstream_id=held.upstream_id)
        self._count = max(self._count - len(expired), 0)
        matched: list[HeldKey] = []
        again: list[tuple[HeldKey, float, float]] = []
        try:
            for held in taken:
                status = CloudStatus(
                    held.upstream_id, held.number, held.state, held.code, held.meaning
                )
                outcome = await apply_status(self.ctx, held.provider, status, log_unmatched=False)
                if outcome == "unknown_task":
                    # A send's answer is recorded within seconds; a report still unmatched
                    # after HELD_EAGER most likely never will be, and should not cost a read
                    # every second.
                    wait = held.wait
                    if now - held.held_at >= HELD_EAGER:
                        wait = min(wait * 2, HELD_MAX_RETRY)
                    again.append((held.key, now + wait, wait))
                    continue
                matched.append(held.key)
                self._count = max(self._count - 1, 0)
                self.ctx.metrics.cloud_reports_held.labels(held.provider, "matched").inc()
        finally:
            # What was tried, even when the ledger failed part way: the reports not tried
            # stay taken until HELD_TAKE passes, then any instance tries them again.
            await self.store.settle_held_reports(matched, again)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HELD_RETRY)
            try:
                await self.retry_once()
            except LedgerError as exc:
                # The ledger is down (it says so itself): the reports stay held until it is
                # back or they expire. Not a crash of this loop.
                log.warning("report_hold_retry_failed", held=self._count, reason=str(exc))


def _matching(recipients: list[Recipient], number: str | None) -> list[Recipient]:
    """The recipients of one provider message id that a status names. Providers echo the
    number in their own format (`0912345678`, `886912345678`), so numbers are compared by
    their national significant digits; a status without a number covers the whole batch. A
    status naming another number than the one recipient of its id is no report on it."""
    if number is None:
        return recipients
    digits = "".join(ch for ch in number if ch.isascii() and ch.isdigit()).lstrip("0")
    if len(digits) < 6:
        return []
    return [r for r in recipients if r.number.endswith(digits)]
