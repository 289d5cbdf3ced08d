"""Cloud delivery statuses, pushed (DLR hooks) or queried (status API), applied to the ledger.

Both ways go through `apply_status`, so a status has the same effect whichever way it arrives
and applying it twice changes nothing (the ledger never moves a recipient backwards or out of a
final state). A report that arrives before its send is recorded is held and tried again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from goipd.ledger.base import Receiving
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError, Outcome, Recipient, State
from goipd.upstream.cloud import CloudStatus

log = structlog.get_logger("goipd.reports")


HELD_LIMIT = 10_000


HELD_FOR = 600.0


HELD_RETRY = 1.0


HELD_MAX_RETRY = 16.0


HELD_EAGER = 30.0


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


@dataclass(slots=True)
class _Held:
    status: CloudStatus
    since: float
    next_try: float
    wait: float


class HeldReports:
    """Delivery reports that arrived before goipd recorded the message id they name.

    A provider may push its report while dispatch is still writing the send's answer (the
    provider id) to the ledger: matched at once, such a report would find nobody and be lost.
    It is kept here instead and matched again until the id is recorded or `keep_for` passes.
    Memory only, bounded by `limit`: after a restart the status query (smsgo) finds what a
    lost report would have said.
    """

    def __init__(
        self,
        ctx: CloudContext,
        *,
        limit: int = HELD_LIMIT,
        keep_for: float = HELD_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.limit = limit
        self.keep_for = keep_for
        self.clock = clock
        self._held: OrderedDict[tuple[str, str, str | None], _Held] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    async def apply(self, provider: str, status: CloudStatus) -> str:
        """apply_status for a pushed report; one that matches nobody yet is held ("held")."""
        outcome = await apply_status(self.ctx, provider, status)
        if outcome != "unknown_task" or status.state not in (State.DELIVERED, State.FAILED):
            return outcome  # a pending status is not worth holding: nothing would be recorded
        key = (provider, status.upstream_id, status.number)
        now = self.clock()
        held = self._held.get(key)
        if held is not None:
            held.status = status  # the provider repeated it: one slot, the first arrival's age
            return "held"
        if len(self._held) >= self.limit:
            # The oldest is the one least likely ever to match (a send goipd did not make).
            (old_provider, old_id, _), _dropped = self._held.popitem(last=False)
            self.ctx.metrics.cloud_reports_held.labels(old_provider, "overflow").inc()
            log.warning("report_hold_overflowed", provider=old_provider, upstream_id=old_id)
        self._held[key] = _Held(status, now, now + HELD_RETRY, HELD_RETRY)
        self.ctx.metrics.cloud_reports_held.labels(provider, "held").inc()
        log.info("report_held", provider=provider, upstream_id=status.upstream_id)
        return "held"

    async def retry_once(self) -> None:
        """Match every held report that is due again; apply, expire or keep each."""
        now = self.clock()
        for key, held in list(self._held.items()):
            if self._held.get(key) is not held:
                continue  # replaced or dropped while an earlier one was being matched
            provider = key[0]
            if now - held.since > self.keep_for:
                del self._held[key]
                self.ctx.metrics.cloud_reports_held.labels(provider, "expired").inc()
                log.warning(
                    "report_hold_expired", provider=provider, upstream_id=held.status.upstream_id
                )
                continue
            if held.next_try > now:
                continue
            outcome = await apply_status(self.ctx, provider, held.status, log_unmatched=False)
            if outcome == "unknown_task":
                # A send's answer is recorded within seconds; a report still unmatched after
                # HELD_EAGER most likely never will be, and should not cost a read every second.
                if now - held.since >= HELD_EAGER:
                    held.wait = min(held.wait * 2, HELD_MAX_RETRY)
                held.next_try = now + held.wait
                continue
            if self._held.get(key) is held:
                del self._held[key]
            self.ctx.metrics.cloud_reports_held.labels(provider, "matched").inc()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HELD_RETRY)
            try:
                await self.retry_once()
            except LedgerError as exc:
                # The ledger is down (it says so itself): the reports stay held until it is
                # back or they expire. Not a crash of this loop.
                log.warning("report_hold_retry_failed", held=len(self._held), reason=str(exc))


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
