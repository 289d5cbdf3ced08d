"""Held delivery reports and hand-over retry times in the ledger (the `HeldStore` role), on both
backends: a held report is stored once however often it is repeated, the oldest give way beyond
the limit, each try is taken by one instance (also by two instances on one PostgreSQL taking at
once), reports expire, and what a try found is kept; a hand-over retry time is read back as
written, holds only for the attempts it was written for, and passed, void, old and surplus
ones are deleted."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from goipd.ledger.held import HeldReport
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import Claim, Outcome, State
from tests.helpers.ledgers import BACKENDS, NOW, PG_URL, new, open_backend

Ledger = SqliteLedger | PostgresLedger
KEEP = 600.0
TAKE = 30.0

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


def report(
    upstream_id: str,
    held_at: float = NOW,
    *,
    provider: str = "smsgo",
    number: str | None = "886912345678",
    state: State = State.DELIVERED,
) -> HeldReport:
    return HeldReport(
        provider,
        upstream_id,
        number,
        state,
        "DELIVRD" if state is State.DELIVERED else "UNDELIV",
        "delivered" if state is State.DELIVERED else "not delivered",
        held_at=held_at,
        next_try=held_at + 1.0,
        wait=1.0,
    )


async def test_a_held_report_is_stored_once_and_its_repeat_keeps_its_age(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        assert await store.held_reports_summary() == (0, None, None)
        assert await store.hold_report(report("m-1"), 10) == (True, [])
        # The provider repeats it later, now saying it failed: one row, the first age.
        repeat = report("m-1", NOW + 5, state=State.FAILED)
        assert await store.hold_report(repeat, 10) == (False, [])
        # Another number of the same id, and a report naming no number, are other reports.
        assert await store.hold_report(report("m-1", number="886912345679"), 10) == (True, [])
        assert await store.hold_report(report("m-1", number=None), 10) == (True, [])
        assert await store.held_reports_summary() == (3, NOW + 1, NOW)
        taken, expired = await store.take_held_reports(NOW + 1, KEEP, TAKE, 10)
        assert expired == []
        by_number = {h.number: h for h in taken}
        assert set(by_number) == {"886912345678", "886912345679", None}
        first = by_number["886912345678"]
        assert (first.state, first.code, first.held_at) == (State.FAILED, "UNDELIV", NOW)
        assert (first.next_try, first.wait) == (NOW + 1 + TAKE, 1.0)


async def test_text_the_database_cannot_hold_is_stored_anyway(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        odd = HeldReport("paasoo", "id\x00x", None, State.FAILED, "404", "bad\x00", NOW, NOW, 1.0)
        assert await store.hold_report(odd, 10) == (True, [])
        [taken], _ = await store.take_held_reports(NOW, KEEP, TAKE, 10)
        assert (taken.upstream_id, taken.meaning) == ("id\ufffdx", "bad\ufffd")
        await store.settle_held_reports([taken.key], [])
        assert (await store.held_reports_summary())[0] == 0


async def test_beyond_the_limit_the_oldest_give_way(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        for n in range(3):
            assert await store.hold_report(report(f"old-{n}", NOW + n), 3) == (True, [])
        new_one, dropped = await store.hold_report(report("new", NOW + 10), 3)
        assert new_one and [d.upstream_id for d in dropped] == ["old-0"]
        # A repeat takes no room.
        assert await store.hold_report(report("new", NOW + 11), 3) == (False, [])
        assert await store.held_reports_summary() == (3, NOW + 2, NOW + 1)


async def test_a_try_takes_the_due_reports_and_expires_the_old(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        await store.hold_report(report("old", NOW), 10)
        await store.hold_report(report("due", NOW + 300), 10)
        await store.hold_report(report("later", NOW + 310), 10)
        now = NOW + KEEP + 5
        # "later" is due too (next_try is long past), "old" is older than KEEP.
        taken, expired = await store.take_held_reports(now, KEEP, TAKE, 1)
        assert [e.upstream_id for e in expired] == ["old"]
        assert [t.upstream_id for t in taken] == ["due"]  # the limit: the earliest next_try
        # Taken: not due again until its take time passes, even for the same instance.
        taken, _ = await store.take_held_reports(now, KEEP, TAKE, 10)
        assert [t.upstream_id for t in taken] == ["later"]
        assert await store.take_held_reports(now + TAKE - 1, KEEP, TAKE, 10) == ([], [])
        # A try that did not finish (its instance died): due again after the take time.
        taken, _ = await store.take_held_reports(now + TAKE, KEEP, TAKE, 10)
        assert {t.upstream_id for t in taken} == {"due", "later"}


async def test_what_a_try_found_is_kept(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        await store.hold_report(report("matched"), 10)
        await store.hold_report(report("unmatched"), 10)
        taken, _ = await store.take_held_reports(NOW + 1, KEEP, TAKE, 10)
        keys = {t.upstream_id: t.key for t in taken}
        await store.settle_held_reports([keys["matched"]], [(keys["unmatched"], NOW + 3, 2.0)])
        assert await store.held_reports_summary() == (1, NOW + 3, NOW)
        assert await store.take_held_reports(NOW + 2.5, KEEP, TAKE, 10) == ([], [])
        [again], _ = await store.take_held_reports(NOW + 3, KEEP, TAKE, 10)
        assert (again.upstream_id, again.wait) == ("unmatched", 2.0)
        await store.settle_held_reports([], [])  # nothing to write: no error


async def test_held_reports_outlive_the_process(backend: str, tmp_path: Path) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with open_backend(backend, tmp_path, schema=schema) as store:
            await store.hold_report(report("m-1"), 10)
            await store.set_handover_retries({7: (1, NOW + 30)}, NOW, KEEP, 10)
        async with open_backend(backend, tmp_path, schema=schema) as store:
            assert await store.held_reports_summary() == (1, NOW + 1, NOW)
            assert await store.handover_retries([7, 8]) == {7: (1, NOW + 30)}
    finally:
        await _drop(backend, schema)


async def test_two_instances_taking_at_once_take_each_report_once(
    backend: str, tmp_path: Path
) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            open_backend(backend, tmp_path, schema=schema) as a,
            open_backend(backend, tmp_path, schema=schema) as b,
        ):
            for n in range(200):
                await a.hold_report(report(f"m-{n}", NOW + n / 1000), 1000)
            takes = await asyncio.gather(
                *(
                    store.take_held_reports(NOW + 5, KEEP, TAKE, 30)
                    for _ in range(5)
                    for store in (a, b)
                )
            )
            ids = [h.upstream_id for taken, _ in takes for h in taken]
            assert len(ids) == len(set(ids)) == 200
    finally:
        await _drop(backend, schema)


async def test_a_handover_retry_time_is_read_back_for_its_attempts(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        assert await store.handover_retries([]) == {}
        await store.set_handover_retries({1: (1, NOW + 30), 2: (2, NOW + 60)}, NOW, KEEP, 10)
        await store.set_handover_retries({1: (2, NOW + 90)}, NOW + 1, KEEP, 10)  # replaced
        many = list(range(1, 1200))  # more ids than SQLite binds at once
        assert await store.handover_retries(many) == {1: (2, NOW + 90), 2: (2, NOW + 60)}
        await store.clear_handover_retries([1, 3])
        await store.clear_handover_retries([])
        assert await store.handover_retries([1, 2]) == {2: (2, NOW + 60)}


async def test_handover_retry_times_of_no_more_use_are_deleted(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        live, claimed_again, cancelled = [
            (await store.accept(new((number,)), NOW)).message.recipients[0]
            for number in ("+886912345601", "+886912345602", "+886912345603")
        ]
        await store.claim([Claim(r.id, "c123", None, None) for r in (live, claimed_again)], NOW)
        await store.record(
            [Outcome(r.id, State.QUEUED, retry_at=NOW + 3600) for r in (live, claimed_again)],
            NOW,
        )
        await store.claim([Claim(claimed_again.id, "c123", None, None)], NOW + 1)  # attempts 2
        await store.cancel(cancelled.message_id, NOW + 1)
        ids = [live.id, claimed_again.id, cancelled.id]
        await store.set_handover_retries({rid: (1, NOW + 10) for rid in ids}, NOW, KEEP, 10)
        # Not passed yet: kept, void or not (a row is written before its recipient is queued).
        assert set(await store.handover_retries(ids)) == set(ids)
        # Passed: the void ones go (attempts moved on, or no longer queued or dispatching).
        await store.set_handover_retries({99: (1, NOW + 100)}, NOW + 20, KEEP, 10)
        assert set(await store.handover_retries([*ids, 99])) == {live.id, 99}
        # One still of use goes KEEP after its time; 99 has passed and names no recipient.
        await store.set_handover_retries({98: (1, NOW + 9999)}, NOW + 11 + KEEP, KEEP, 10)
        assert set(await store.handover_retries([*ids, 98, 99])) == {98}


async def test_beyond_the_limit_the_earliest_handover_retry_times_go(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        await store.set_handover_retries({n: (1, NOW + 100 - n) for n in range(1, 6)}, NOW, KEEP, 3)
        assert set(await store.handover_retries(range(1, 6))) == {1, 2, 3}


async def _drop(backend: str, schema: str) -> None:
    if backend != "postgresql":
        return
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
