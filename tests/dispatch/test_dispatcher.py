"""Dispatch: the outcomes of sends that finish together are one ledger write, and the ledger's
error reaches every caller; a failed hand-over of a scheduled send is tried again at its retry
time, also by the next process (the time is in the ledger), and looking it up costs one read
per recipient and attempt, not one per pass; a recipient past its validity or
routing.max_queue_age expires instead of being sent, also one that waited for a send slot."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goipd.config import RouteRule, RouteTarget, RoutingSettings
from goipd.dispatch.dispatcher import Dispatcher, _OutcomeWriter
from goipd.dispatch.routing import Router
from goipd.fleet.registry import LineRegistry
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import EXPIRED_CODE, Claim, LedgerError, NewMessage, Outcome, State
from goipd.upstream.cloud import CloudSendResult, CloudStatus, Verdict
from tests.helpers.ledgers import NOW, new, open_backend


async def test_outcomes_recorded_together_are_one_write(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "goipd.db")
    await ledger.open()
    try:
        message = NewMessage(
            text="hi", recipients=("+886900000001", "+886900000002"), segments=1, encoding="GSM-7"
        )
        ids = [r.id for r in (await ledger.accept(message, 1.0)).message.recipients]
        await ledger.claim([Claim(rid, "goip", "hq", "G1") for rid in ids], 1.0)
        writer = _OutcomeWriter(ledger, lambda: 2.0)
        commits = ledger.commits
        await asyncio.gather(
            *(writer.record([Outcome(rid, State.SUBMITTED, task_id="9")]) for rid in ids)
        )
        assert ledger.commits == commits + 1
        assert (await ledger.counts())[State.SUBMITTED] == 2
    finally:
        await ledger.close()
    # The ledger's error reaches every caller of the write.
    results = await asyncio.gather(
        *(writer.record([Outcome(rid, State.SENT)]) for rid in ids), return_exceptions=True
    )
    assert all(isinstance(r, LedgerError) for r in results), results


class SchedulingProvider:
    """A provider that schedules sends itself (as c123 `time`), refusing them while `refusing`."""

    name = "c123"
    max_batch = 100
    balance_clears: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.refusing = True
        self.calls: list[tuple[list[str], float | None]] = []

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        self.calls.append((list(numbers), send_at))
        if self.refusing:
            return [CloudSendResult(n, Verdict.RETRY, code="http_status") for n in numbers]
        return [CloudSendResult(n, Verdict.ACCEPTED, upstream_id=f"c-{n}") for n in numbers]

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        return []

    async def balance(self) -> float | None:
        return None

    async def cancel(self, upstream_id: str) -> bool:
        return False

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduling_dispatcher(
    ledger: SqliteLedger,
    provider: SchedulingProvider,
    clock: Clock,
    settings: RoutingSettings | None = None,
) -> Dispatcher:
    """A dispatcher (a process, or an instance) handing c123's scheduled sends over an hour
    ahead."""
    settings = settings or RoutingSettings(retry_delay="5s", max_attempts=6)
    route = RouteRule(via=(RouteTarget(cloud="c123"),))
    router = Router(LineRegistry({}), settings, (route,), {}, ("c123",))
    return Dispatcher(
        ledger,
        router,
        router.registry,
        lambda _name: None,
        settings,
        Metrics(),
        clouds=lambda name: provider if name == "c123" else None,
        schedule_ahead=lambda name: 3600.0 if name == "c123" else 0.0,
        clock=clock,
    )


async def hand_over(dispatcher: Dispatcher) -> int:
    started = await dispatcher.hand_over_scheduled()
    while dispatcher._in_flight:
        await asyncio.gather(*dispatcher._in_flight)
    return started


async def test_a_failed_handover_is_retried_at_its_time_by_the_next_process(
    tmp_path: Path,
) -> None:
    clock, provider = Clock(NOW), SchedulingProvider()
    async with open_backend("sqlite", tmp_path) as ledger:
        accepted = await ledger.accept(new(("+8613800138000",), send_at=NOW + 600), NOW)
        rid = accepted.message.recipients[0].id
        first = scheduling_dispatcher(ledger, provider, clock)
        assert await hand_over(first) == 1
        # Refused: queued at its send_at, tried again after retry_delay, kept in the ledger.
        assert await ledger.handover_retries([rid]) == {rid: (1, NOW + 5)}
        clock.now = NOW + 1
        assert await hand_over(first) == 0

    # A restart (or another instance): the next dispatcher keeps the first one's time.
    async with open_backend("sqlite", tmp_path) as ledger:
        second = scheduling_dispatcher(ledger, provider, clock)
        reads = count_calls(ledger, "handover_retries")
        provider.refusing = False
        clock.now = NOW + 4.9
        assert await hand_over(second) == 0
        assert await hand_over(second) == 0
        assert reads == [1]  # what the ledger said of these attempts is not asked again
        clock.now = NOW + 5
        assert await hand_over(second) == 1
        assert provider.calls == [(["+8613800138000"], NOW + 600)] * 2
        message = await ledger.get_message(accepted.message.id)
        assert message is not None
        [recipient] = message.recipients
        assert (recipient.state, recipient.attempts) == (State.SUBMITTED, 2)
        # Handed over: its retry time is gone.
        assert await ledger.handover_retries([rid]) == {}


async def test_a_recipient_waiting_for_an_ordinary_retry_is_not_handed_over(
    tmp_path: Path,
) -> None:
    clock, provider = Clock(NOW), SchedulingProvider()
    async with open_backend("sqlite", tmp_path) as ledger:
        accepted = await ledger.accept(new(("+8613800138000",)), NOW)
        rid = accepted.message.recipients[0].id
        await ledger.claim([Claim(rid, "c123", None, None)], NOW)
        await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW + 60)], NOW)
        dispatcher = scheduling_dispatcher(ledger, provider, clock)
        reads = count_calls(ledger, "handover_retries")
        for _ in range(3):
            assert await hand_over(dispatcher) == 0
        assert provider.calls == [] and reads == [1]


def count_calls(ledger: SqliteLedger, name: str) -> list[int]:
    """Counts the calls of one ledger method (the list's only item)."""
    calls = [0]
    method = getattr(ledger, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await method(*args, **kwargs)

    setattr(ledger, name, counted)
    return calls


async def test_a_recipient_expires_instead_of_being_sent(tmp_path: Path) -> None:
    clock, provider = Clock(NOW), SchedulingProvider()
    provider.refusing = False
    settings = RoutingSettings(retry_delay="5s", max_queue_age="1h")
    async with open_backend("sqlite", tmp_path) as ledger:
        dispatcher = scheduling_dispatcher(ledger, provider, clock, settings)
        valid = await ledger.accept(new(("+8613800138001",), expires_at=NOW + 30), NOW - 1)
        old = await ledger.accept(new(("+8613800138002",), text="old"), NOW - 3601)
        lapsed = await ledger.accept(new(("+8613800138003",), expires_at=NOW), NOW - 10)
        assert await dispatcher.dispatch_once() == 1
        while dispatcher._in_flight:
            await asyncio.gather(*dispatcher._in_flight)
        assert [numbers for numbers, _ in provider.calls] == [["+8613800138001"]]
        states = {}
        for accepted in (valid, old, lapsed):
            message = await ledger.get_message(accepted.message.id)
            assert message is not None
            [recipient] = message.recipients
            states[recipient.number] = (recipient.state, recipient.error_code)
        assert states == {
            "+8613800138001": (State.SENT, None),
            "+8613800138002": (State.EXPIRED, "max_queue_age"),
            "+8613800138003": (State.EXPIRED, EXPIRED_CODE),
        }
        expired = dispatcher.metrics.recipients_expired
        assert expired.labels("validity")._value.get() == 1
        assert expired.labels("max_queue_age")._value.get() == 1


async def test_a_claimed_recipient_whose_validity_ends_before_its_send_expires(
    tmp_path: Path,
) -> None:
    clock, provider = Clock(NOW), SchedulingProvider()
    provider.refusing = False
    async with open_backend("sqlite", tmp_path) as ledger:
        dispatcher = scheduling_dispatcher(ledger, provider, clock)
        accepted = await ledger.accept(new(("+8613800138001",), expires_at=NOW + 2), NOW)
        # Every send slot is taken when the pass claims it; one frees after its validity.
        slots = dispatcher._slots
        while not slots.locked():
            await slots.acquire()
        passing = asyncio.create_task(dispatcher.dispatch_once())
        await asyncio.sleep(0.05)
        clock.now = NOW + 2
        slots.release()
        assert await passing == 0
        assert provider.calls == []
        message = await ledger.get_message(accepted.message.id)
        assert message is not None
        assert message.recipients[0].state is State.EXPIRED
        # The slot it would have used is free again.
        assert slots._value == 1


async def test_a_recipient_waiting_for_a_retry_expires_at_its_time(tmp_path: Path) -> None:
    clock, provider = Clock(NOW), SchedulingProvider()
    async with open_backend("sqlite", tmp_path) as ledger:
        dispatcher = scheduling_dispatcher(ledger, provider, clock)
        accepted = await ledger.accept(new(("+8613800138001",), expires_at=NOW + 20), NOW)
        rid = accepted.message.recipients[0].id
        await ledger.claim([Claim(rid, "c123", None, None)], NOW)
        await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW + 60)], NOW)
        clock.now = NOW + 19.5
        assert await dispatcher.expire_waiting() == 0
        clock.now = NOW + 20
        # At most one look per second.
        assert await dispatcher.expire_waiting() == 0
        clock.now = NOW + 20.5
        assert await dispatcher.expire_waiting() == 1
        message = await ledger.get_message(accepted.message.id)
        assert message is not None and message.recipients[0].state is State.EXPIRED
