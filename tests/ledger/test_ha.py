"""The ledger's part in running several instances, on both backends: leases are exclusive and
expire, a fleet snapshot is written only by the lease holder, and stale claims are settled by
exactly one instance, never while their instance is alive. PostgreSQL runs use the real server,
one schema per test; "instances" are ledger objects with different instance ids on one store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import Claim, Outcome, State
from tests.helpers.ledgers import NOW, PG_URL, new

Ledger = SqliteLedger | PostgresLedger
Open = Callable[[str], Awaitable[Ledger]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def instance(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Open]:
    """Opens the same store as another instance each call."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    opened: list[Ledger] = []

    async def open_as(instance_id: str) -> Ledger:
        store: Ledger
        if request.param == "sqlite":
            store = SqliteLedger(tmp_path / "goipd.db", instance_id=instance_id)
        else:
            store = PostgresLedger(PG_URL, schema=schema, instance_id=instance_id)
        await store.open()
        opened.append(store)
        return store

    yield open_as
    for store in opened:
        await store.close()
    if request.param == "postgresql":
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_a_lease_is_held_by_one_instance_until_released_or_expired(instance: Open) -> None:
    a, b = await instance("a"), await instance("b")
    assert await a.acquire_leases({"poll:hq": 30.0, "poll:branch": 0.2}) == {
        "poll:hq",
        "poll:branch",
    }
    assert await b.acquire_leases({"poll:hq": 30.0, "poll:branch": 30.0}) == set()
    assert await a.acquire_leases({"poll:hq": 30.0}) == {"poll:hq"}  # a renewal
    await asyncio.sleep(0.3)
    # poll:branch expired without renewal: b takes it, and a's renewal now fails.
    assert await b.acquire_leases({"poll:hq": 30.0, "poll:branch": 30.0}) == {"poll:branch"}
    assert await a.acquire_leases({"poll:branch": 30.0}) == set()
    await b.release_leases(["poll:hq", "poll:branch"])  # not b's hq: left alone
    assert await b.acquire_leases({"poll:hq": 30.0}) == set()
    await a.release_leases(["poll:hq"])
    assert await b.acquire_leases({"poll:hq": 30.0}) == {"poll:hq"}


async def test_instances_asking_at_once_get_a_lease_exactly_once(instance: Open) -> None:
    stores = [await instance(f"i{n}") for n in range(6)]
    for _ in range(5):
        names = {f"poll:s{n}": 30.0 for n in range(20)}
        held = await asyncio.gather(*(store.acquire_leases(names) for store in stores))
        for name in names:
            assert sum(name in h for h in held) == 1, name
        for store in stores:
            await store.release_leases(list(names))


async def test_only_the_lease_holder_writes_the_snapshot(instance: Open) -> None:
    a, b = await instance("a"), await instance("b")
    assert await b.fleet_snapshots({"hq": 0}) == []
    assert not await a.put_fleet_snapshot("hq", "poll:hq", '{"v":0}', NOW)  # no lease yet
    await a.acquire_leases({"poll:hq": 30.0})
    assert await a.put_fleet_snapshot("hq", "poll:hq", '{"v":1}', NOW)
    assert not await b.put_fleet_snapshot("hq", "poll:hq", '{"v":"b"}', NOW)
    (first,) = await b.fleet_snapshots({"hq": 0, "branch": 0})
    assert (first.server, first.owner, first.body, first.taken_at) == ("hq", "a", '{"v":1}', NOW)
    assert await b.fleet_snapshots({"hq": first.version}) == []  # nothing new
    assert await a.put_fleet_snapshot("hq", "poll:hq", '{"v":2}', NOW + 1)
    (second,) = await b.fleet_snapshots({"hq": first.version})
    assert second.version > first.version and second.body == '{"v":2}'
    await a.release_leases(["poll:hq"])
    await b.acquire_leases({"poll:hq": 30.0})
    assert not await a.put_fleet_snapshot("hq", "poll:hq", '{"v":"stale"}', NOW + 2)
    assert await b.put_fleet_snapshot("hq", "poll:hq", '{"v":3}', NOW + 2)
    (third,) = await a.fleet_snapshots({"hq": second.version})
    assert (third.owner, third.body) == ("b", '{"v":3}')


async def claimed(store: Ledger, numbers: tuple[str, ...]) -> list[int]:
    message = (await store.accept(new(numbers), NOW)).message
    ids = [r.id for r in message.recipients]
    assert await store.claim([Claim(i, "goip", "hq", "G1") for i in ids], NOW) == ids
    return ids


async def test_restamped_claims_are_only_this_instances_dispatching_ones(instance: Open) -> None:
    a, b = await instance("a"), await instance("b")
    mine = await claimed(a, ("+886900000011", "+886900000012"))
    theirs = await claimed(b, ("+886900000013",))
    await a.record([Outcome(mine[1], State.SUBMITTED, task_id="7")], NOW)
    await a.restamp_claims([*mine, *theirs], NOW + 40)

    async def updated(store: Ledger, recipient_id: int) -> float:
        found = await store.in_state(State.DISPATCHING, NOW + 1000, 100)
        found += await store.in_state(State.SUBMITTED, NOW + 1000, 100)
        return next(r.updated_at for r in found if r.id == recipient_id)

    assert await updated(a, mine[0]) == NOW + 40
    assert await updated(a, mine[1]) == NOW  # submitted: no claim any more
    assert await updated(b, theirs[0]) == NOW  # another instance's claim


async def test_claims_of_a_live_instance_are_left_alone_and_a_dead_ones_taken_once(
    instance: Open,
) -> None:
    a, b, c = await instance("a"), await instance("b"), await instance("c")
    for store in (a, b, c):
        await store.acquire_leases({f"instance:{store.instance_id}": 0.3})
    mine = await claimed(a, ("+886900000001", "+886900000002"))
    # b and c see a's heartbeat: a's sends may be in flight.
    assert await b.take_stale_claims(NOW + 1000, 100) == []
    # a's own claims are its own business until they are old (or a restarts, same id).
    assert await a.take_stale_claims(NOW - 300, 100) == []
    await asyncio.sleep(0.4)
    await b.acquire_leases({"instance:b": 30.0})
    await c.acquire_leases({"instance:c": 30.0})
    taken = await asyncio.gather(b.take_stale_claims(NOW, 100), c.take_stale_claims(NOW, 100))
    assert sorted(r.id for got in taken for r in got) == mine, "each claim taken exactly once"
    assert all(r.state is State.DISPATCHING and r.updated_at == NOW for got in taken for r in got)
    # Now held by a live instance: nobody takes them again (b and c are alive, a is not).
    assert await b.take_stale_claims(NOW - 300, 100) == []
    assert await c.take_stale_claims(NOW - 300, 100) == []
    # A settled claim is no claim: re-queued, it is claimed again like any recipient.
    await b.record([Outcome(i, State.QUEUED) for i in mine], NOW)
    assert await b.take_stale_claims(NOW + 1000, 100) == []


async def test_own_claims_are_settled_at_restart_and_claims_of_unknown_instances_too(
    instance: Open,
) -> None:
    a = await instance("a")
    await a.acquire_leases({"instance:a": 30.0})
    mine = await claimed(a, ("+886900000001",))
    theirs = await claimed(await instance("gone"), ("+886900000002",))  # never had a heartbeat
    assert [r.id for r in await a.take_stale_claims(NOW - 300, 100)] == theirs
    # A restart under the same id (ha.instance_id set): everything of its past is stale.
    restarted = await instance("a")
    assert [r.id for r in await restarted.take_stale_claims(NOW + 1, 100)] == mine + theirs


async def test_submitted_of_and_task_ids_by_time(instance: Open) -> None:
    a = await instance("a")
    ids = await claimed(a, tuple(f"+88690000000{n}" for n in range(6)))
    # Tasks 10, 11, 12 on hq at NOW+1..3, task 7 on branch: recorded in this order.
    for step, (rid, server, task) in enumerate(
        [(ids[0], "hq", 10), (ids[1], "hq", 11), (ids[2], "hq", 12), (ids[3], "branch", 7)]
    ):
        if server == "branch":
            await a.record([Outcome(rid, State.QUEUED)], NOW)
            await a.claim([Claim(rid, "goip", "branch", "B1")], NOW)
        await a.record([Outcome(rid, State.SUBMITTED, task_id=str(task))], NOW + 1 + step)
    assert await a.task_id_bounds("hq", NOW + 2.5, NOW + 1.5) == (11, 11)
    assert await a.task_id_bounds("hq", NOW + 0.5, NOW + 3.5) == (None, None)
    assert await a.task_id_bounds("hq", NOW + 10, -1.0) == (12, 10)
    assert await a.recorded_task_ids("hq", 10, 12) == {10, 11}
    assert await a.recorded_task_ids("branch", 0, 100) == {7}
    of_hq = await a.submitted_of(["hq"], NOW + 100, 10)
    assert [r.task_id for r in of_hq] == ["10", "11", "12"]
    assert [r.task_id for r in await a.submitted_of(["hq", "branch"], NOW + 2.5, 10)] == [
        "10",
        "11",
    ]
    assert await a.submitted_of([], NOW + 100, 10) == []


async def test_submitted_of_servers_no_longer_configured(instance: Open) -> None:
    a = await instance("a")
    ids = await claimed(a, ("+886900000001", "+886900000002", "+886900000003"))
    # One send submitted on hq, one on branch; the third still in flight on hq.
    await a.record([Outcome(ids[0], State.SUBMITTED, task_id="10")], NOW + 1)
    await a.record([Outcome(ids[1], State.QUEUED)], NOW + 1)
    assert await a.claim([Claim(ids[1], "goip", "branch", "B1")], NOW + 1) == [ids[1]]
    await a.record([Outcome(ids[1], State.SUBMITTED, task_id="7")], NOW + 2)
    assert [r.id for r in await a.submitted_not_of(["hq"], NOW + 100, 10)] == [ids[1]]
    assert [r.id for r in await a.submitted_not_of([], NOW + 100, 10)] == [ids[0], ids[1]]
    assert await a.submitted_not_of(["hq", "branch"], NOW + 100, 10) == []
    assert await a.submitted_not_of(["hq"], NOW + 1.5, 10) == []  # updated since


async def test_line_sends_are_counted_for_all_instances_together(instance: Open) -> None:
    stores = [await instance(f"i{n}") for n in range(4)]
    line, other = ("hq", "G1"), ("hq", "G2")
    reserved = await asyncio.gather(
        *(store.reserve_line_sends({line: 3, other: 1}, per_minute=6) for store in stores)
    )
    assert sum(r.granted[line] for r in reserved) == 6, reserved
    assert all(r.granted[other] == 1 for r in reserved)
    assert (await stores[0].reserve_line_sends({line: 5}, per_minute=6)).granted == {line: 0}
    # Two reserved were not sent.
    await stores[3].release_line_sends({line: 2, other: 0}, reserved[3].minute)
    assert (await stores[0].reserve_line_sends({line: 5}, per_minute=6)).granted == {line: 2}
    assert (await stores[1].reserve_line_sends({line: 5}, per_minute=10)).granted == {line: 4}
    branch = await stores[2].reserve_line_sends({("branch", "G1"): 50}, per_minute=6)
    assert branch.granted == {("branch", "G1"): 6}


async def test_a_polled_quota_is_shared_by_all_instances(instance: Open) -> None:
    stores = [await instance(f"i{n}") for n in range(3)]
    line = ("hq", "G1")
    # The last poll saw 5 SMS of day quota left; the rate alone would allow 60 a minute.
    quota = {line: (5, time.time())}
    reserved = await asyncio.gather(
        *(store.reserve_line_sends({line: 4}, per_minute=60, quotas=quota) for store in stores)
    )
    assert sum(r.granted[line] for r in reserved) == 5, reserved
    again = await stores[0].reserve_line_sends({line: 1}, per_minute=60, quotas=quota)
    assert again.granted == {line: 0}
    # A send given back is quota back.
    await stores[1].release_line_sends({line: 1}, reserved[1].minute)
    again = await stores[2].reserve_line_sends({line: 3}, per_minute=60, quotas=quota)
    assert again.granted == {line: 1}
    # A newer poll reports the quota after those sends: counted from then on.
    later = {line: (4, time.time() + 120)}
    again = await stores[0].reserve_line_sends({line: 9}, per_minute=60, quotas=later)
    assert again.granted == {line: 4}
    # Without a quota only the rate limits.
    assert (await stores[1].reserve_line_sends({line: 9}, per_minute=60)).granted == {line: 9}


async def _line_sends(store: Ledger, sql: str = "") -> dict[int, int]:
    """The line_sends buckets of hq/G1, read (or first changed by `sql`) straight in the store."""
    query = "SELECT minute, sends FROM line_sends WHERE server = 'hq' AND line = 'G1'"
    if isinstance(store, SqliteLedger):
        with sqlite3.connect(store.path) as db:
            if sql:
                db.execute(sql)
            return dict(db.execute(query).fetchall())
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": store.schema})
    try:
        if sql:
            await conn.execute(sql)
        return {int(m): int(n) for m, n in await conn.fetch(query)}
    finally:
        await conn.close()


async def test_sends_given_back_after_the_minute_rolled_over_leave_their_own_minute(
    instance: Open,
) -> None:
    a, b = await instance("a"), await instance("b")
    line = ("hq", "G1")
    reserved = await a.reserve_line_sends({line: 5}, per_minute=60)
    assert reserved.granted == {line: 5}
    # Waiting for a real minute boundary would take up to a minute: the bucket is moved back
    # one minute instead, which is what the ledger holds when the release comes a minute late.
    await _line_sends(a, "UPDATE line_sends SET minute = minute - 1")
    made_in = reserved.minute - 1
    current = await b.reserve_line_sends({line: 3}, per_minute=60)
    assert current.granted == {line: 3}
    assert current.minute > made_in
    await a.release_line_sends({line: 2}, made_in)
    # Released into the current minute, b's 3 sends would count as 1 and a's 5 would stay.
    assert await _line_sends(a) == {made_in: 3, current.minute: 3}


async def test_two_instances_locking_in_opposite_orders_both_commit(tmp_path: Path) -> None:
    """A real deadlock between two instances' group commits: PostgreSQL rolls one batch back,
    and that batch runs again instead of failing its callers."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    a = PostgresLedger(PG_URL, schema=schema, instance_id="a")
    b = PostgresLedger(PG_URL, schema=schema, instance_id="b")
    await a.open()
    await b.open()
    try:
        message = (await a.accept(new(("+1", "+2")), NOW)).message
        first, second = (r.id for r in message.recipients)
        a_holds, b_holds = asyncio.Event(), asyncio.Event()

        def locking(mine: int, theirs: int, held: asyncio.Event, other: asyncio.Event) -> Any:
            async def op(conn: asyncpg.Connection) -> None:
                await conn.execute("SELECT 1 FROM recipients WHERE id = $1 FOR UPDATE", mine)
                held.set()
                await other.wait()  # set already when the batch runs again
                await conn.execute(
                    "UPDATE recipients SET error_code = $2 WHERE id = $1", theirs, str(mine)
                )

            return op

        await asyncio.wait_for(
            asyncio.gather(
                a._committer.submit(locking(first, second, a_holds, b_holds)),
                b._committer.submit(locking(second, first, b_holds, a_holds)),
            ),
            timeout=20,
        )
        stored = await b.get_message(message.id)
        assert stored is not None
        assert [r.error_code for r in stored.recipients] == [str(second), str(first)]
    finally:
        await a.close()
        await b.close()
        await a.drop_schema()
