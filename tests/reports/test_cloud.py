"""Provider delivery reports that arrive before their send is recorded: held in the ledger
(stored before the provider is answered), bounded in number and age, applied once the provider
id is in the ledger, exactly once however many instances retry them, and after a restart (a
real SQLite ledger; the tries of two instances also on PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, LedgerError, NewMessage, Outcome, State
from goipd.reports.cloud import (
    HELD_FOR,
    HELD_RETRY,
    HELD_TAKE,
    CloudContext,
    HeldReports,
    apply_status,
)
from goipd.upstream.cloud import CloudStatus
from tests.helpers.ledgers import BACKENDS, PG_URL, open_backend, set_read_only

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[CloudContext]:
    ledger = SqliteLedger(tmp_path / "goipd.db")
    await ledger.open()
    yield CloudContext(ledger, Metrics(), lambda: (), clock=lambda: NOW)
    await ledger.close()


def delivered(upstream_id: str, number: str | None = None) -> CloudStatus:
    return CloudStatus(upstream_id, number, State.DELIVERED, "DELIVRD", "delivered")


def counted(ctx: CloudContext, outcome: str, provider: str = "paasoo") -> float:
    value = ctx.metrics.registry.get_sample_value(
        "goipd_cloud_reports_held_total", {"provider": provider, "outcome": outcome}
    )
    return value or 0.0


async def sent_via(ctx: CloudContext, provider: str, upstream_id: str) -> int:
    """A recipient sent through `provider` whose answer (the provider id) is now recorded."""
    accepted = await ctx.ledger.accept(
        NewMessage(text="hi", recipients=("+6591234567",), segments=1, encoding="GSM-7"), NOW
    )
    rid = accepted.message.recipients[0].id
    await ctx.ledger.claim([Claim(rid, provider, None, None)], NOW)
    await ctx.ledger.record([Outcome(rid, State.SENT, upstream_id=upstream_id)], NOW)
    return rid


async def state(ctx: CloudContext, rid: int) -> State:
    found = await ctx.ledger.in_state(State.DELIVERED, NOW + 1, 10)
    return State.DELIVERED if any(r.id == rid for r in found) else State.SENT


async def test_held_report_is_applied_once_the_send_is_recorded(ctx: CloudContext) -> None:
    clock = Clock()
    held = HeldReports(ctx, ctx.ledger, clock=clock)
    assert await held.apply("paasoo", delivered("m-1")) == "held"
    assert await held.apply("paasoo", delivered("m-1")) == "held"  # a repeat takes no slot
    assert len(held) == 1 and counted(ctx, "held") == 1
    clock.now += 1
    await held.retry_once()
    assert len(held) == 1  # nothing recorded yet: still held
    rid = await sent_via(ctx, "paasoo", "m-1")
    clock.now += 1
    await held.retry_once()
    assert len(held) == 0 and counted(ctx, "matched") == 1
    assert await state(ctx, rid) is State.DELIVERED


async def test_matching_report_and_pending_status_are_not_held(ctx: CloudContext) -> None:
    held = HeldReports(ctx, ctx.ledger)
    rid = await sent_via(ctx, "paasoo", "m-2")
    assert await held.apply("paasoo", delivered("m-2")) == "ok"
    assert await state(ctx, rid) is State.DELIVERED
    pending = CloudStatus("m-3", None, State.SENT, "ACCEPTD", "accepted")
    assert await held.apply("paasoo", pending) == "unknown_task"
    assert len(held) == 0 and counted(ctx, "held") == 0


async def test_a_report_naming_another_number_is_not_applied_to_the_one_recipient(
    ctx: CloudContext,
) -> None:
    rid = await sent_via(ctx, "paasoo", "m-4")  # to +6591234567
    assert await apply_status(ctx, "paasoo", delivered("m-4", "6598765432")) == "unknown_task"
    assert await state(ctx, rid) is State.SENT
    # The provider's own format of the right number matches.
    assert await apply_status(ctx, "paasoo", delivered("m-4", "6591234567")) == "ok"
    assert await state(ctx, rid) is State.DELIVERED


async def test_held_reports_expire_and_are_bounded(ctx: CloudContext) -> None:
    clock = Clock()
    held = HeldReports(ctx, ctx.ledger, limit=3, keep_for=600.0, clock=clock)
    for n in range(3):
        await held.apply("paasoo", delivered(f"old-{n}"))
        clock.now += 1
    await held.apply("smsgo", delivered("new-0"))
    # The oldest gives way.
    assert len(held) == 3 and counted(ctx, "overflow") == 1
    clock.now += 600
    await held.retry_once()
    assert len(held) == 1  # old-1 and old-2 are older than keep_for, new-0 is exactly that old
    assert counted(ctx, "expired") == 2
    clock.now += 1
    await held.retry_once()
    assert len(held) == 0 and counted(ctx, "expired", "smsgo") == 1
    # An expired report is gone for good: the send recorded afterwards stays sent.
    rid = await sent_via(ctx, "paasoo", "old-1")
    await held.retry_once()
    assert await state(ctx, rid) is State.SENT


async def test_unmatched_reports_are_retried_less_often_after_a_while(ctx: CloudContext) -> None:
    clock = Clock()
    held = HeldReports(ctx, ctx.ledger, clock=clock)
    await held.apply("paasoo", delivered("late"))
    clock.now += 40  # past the eager phase: the next tries back off
    await held.retry_once()
    clock.now += 1
    rid = await sent_via(ctx, "paasoo", "late")
    await held.retry_once()
    assert len(held) == 1  # waiting out its back-off (2 s)
    clock.now += 1
    await held.retry_once()
    assert len(held) == 0 and await state(ctx, rid) is State.DELIVERED


async def test_held_reports_wait_out_a_ledger_that_cannot_be_read(ctx: CloudContext) -> None:
    held = HeldReports(ctx, ctx.ledger)
    assert await held.apply("paasoo", delivered("m-later", "6591234567")) == "held"
    assert isinstance(ctx.ledger, SqliteLedger)
    await ctx.ledger.close()  # every read now fails with LedgerError
    loop = asyncio.create_task(held.run())
    try:
        await asyncio.sleep(HELD_RETRY * 1.5)
        assert not loop.done(), "a ledger outage ended the held-reports loop"
        assert len(held) == 1
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


def delivered_count(ctx: CloudContext, provider: str = "paasoo") -> float:
    value = ctx.metrics.registry.get_sample_value(
        "goipd_sms_delivered_total", {"route": provider, "server": "", "line": ""}
    )
    return value or 0.0


async def test_a_report_that_cannot_be_stored_is_not_answered(ctx: CloudContext) -> None:
    held = HeldReports(ctx, ctx.ledger)
    assert isinstance(ctx.ledger, SqliteLedger)
    await set_read_only(ctx.ledger, True)
    # The hook answers 503 (problems.py): the provider pushes it again later.
    with pytest.raises(LedgerError):
        await held.apply("paasoo", delivered("m-5"))
    assert len(held) == 0 and counted(ctx, "held") == 0
    await set_read_only(ctx.ledger, False)
    assert await held.apply("paasoo", delivered("m-5")) == "held"
    assert counted(ctx, "held") == 1


async def test_a_held_report_outlives_the_process_that_took_it(tmp_path: Path) -> None:
    clock = Clock()
    async with open_backend("sqlite", tmp_path) as first:
        ctx = CloudContext(first, Metrics(), lambda: (), clock=lambda: NOW)
        assert await HeldReports(ctx, first, clock=clock).apply("paasoo", delivered("m-6")) == (
            "held"
        )
        rid = await sent_via(ctx, "paasoo", "m-6")
    # A new process: nothing of the first but the ledger.
    async with open_backend("sqlite", tmp_path) as second:
        ctx = CloudContext(second, Metrics(), lambda: (), clock=lambda: NOW)
        held = HeldReports(ctx, second, clock=clock)
        clock.now += 1
        await held.retry_once()
        assert len(held) == 0 and counted(ctx, "matched") == 1 and delivered_count(ctx) == 1
        assert await state(ctx, rid) is State.DELIVERED
        clock.now += 60
        await held.retry_once()
        assert counted(ctx, "matched") == 1 and delivered_count(ctx) == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_instances_retrying_together_apply_a_report_once(
    backend: str, tmp_path: Path
) -> None:
    clock = Clock()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            open_backend(backend, tmp_path, schema=schema) as a,
            open_backend(backend, tmp_path, schema=schema) as b,
        ):
            contexts = [CloudContext(s, Metrics(), lambda: (), clock=lambda: NOW) for s in (a, b)]
            instances = [HeldReports(c, c.ledger, clock=clock) for c in contexts]
            for n in range(20):
                assert await instances[n % 2].apply("paasoo", delivered(f"m-{n}")) == "held"
            rids = [await sent_via(contexts[0], "paasoo", f"m-{n}") for n in range(20)]
            for _ in range(3):
                clock.now += 1
                await asyncio.gather(*(held.retry_once() for held in instances))
            assert sum(counted(c, "matched") for c in contexts) == 20
            assert sum(delivered_count(c) for c in contexts) == 20
            assert {r.id for r in await b.in_state(State.DELIVERED, NOW + 1, 100)} == set(rids)
            assert await a.held_reports_summary() == (0, None, None)
    finally:
        if backend == "postgresql":
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


async def test_a_try_cut_short_is_tried_again_after_its_take_time(ctx: CloudContext) -> None:
    clock = Clock()
    held = HeldReports(ctx, ctx.ledger, clock=clock)
    await held.apply("paasoo", delivered("m-7"))
    rid = await sent_via(ctx, "paasoo", "m-7")
    # Another instance took it for a try, and died before it could say what it found.
    assert isinstance(ctx.ledger, SqliteLedger)
    taken, _ = await ctx.ledger.take_held_reports(clock.now + 1, HELD_FOR, HELD_TAKE, 10)
    assert len(taken) == 1
    clock.now += HELD_TAKE
    await held.retry_once()
    assert await state(ctx, rid) is State.SENT and len(held) == 1
    clock.now += 1
    await held.retry_once()
    assert await state(ctx, rid) is State.DELIVERED and counted(ctx, "matched") == 1
