"""What only the PostgreSQL ledger does: an accept or a write it cannot store fails alone, not its
whole batch; send reports are written by two writers at once, each only on the recipient it
read, or decided again. Real PostgreSQL on 127.0.0.1:5432, one schema per test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from itertools import product
from pathlib import Path

import asyncpg
import pytest

from goipd.ledger import postgres
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.rules import planned_updates
from goipd.model import AcceptResult, Claim, LedgerError, Outcome, Recipient, State
from tests.helpers.ledgers import NOW, PG_URL, new


async def test_postgresql_accept_it_cannot_store_fails_only_that_accept_of_its_batch() -> None:
    # Accepts queued together are inserted with one statement per table; the one whose data
    # PostgreSQL refuses (a segment count past int4) must not take the others with it.
    store = PostgresLedger(PG_URL, schema=f"test_{uuid.uuid4().hex[:12]}")
    await store.open()
    try:
        too_many = replace(new(("+886912349999",)), segments=2**40)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(store.accept(new((f"+88691234{i:04d}",)), NOW) for i in range(3)),
                store.accept(too_many, NOW),
                *(store.accept(new((f"+88691235{i:04d}",), key=f"k{i}"), NOW) for i in range(3)),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert isinstance(results[3], LedgerError) and "int32" in str(results[3])
        accepted = [r for i, r in enumerate(results) if i != 3]
        assert all(isinstance(r, AcceptResult) and r.created for r in accepted), accepted
        assert (await store.counts())[State.QUEUED] == 6
        assert store.write_error is None
    finally:
        await store.close()
        await store.drop_schema()


async def test_postgresql_text_it_cannot_store_fails_only_that_write(tmp_path: Path) -> None:
    store = PostgresLedger(PG_URL, schema=f"test_{uuid.uuid4().hex[:12]}")
    await store.open()

    async def raw_nul(conn: asyncpg.Connection) -> None:
        # Past the boundary that replaces NUL: what any other unstorable text would do.
        await conn.execute("INSERT INTO line_quarantines VALUES ('hq', $1, NULL, 0)", "G\x00")

    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(store.accept(new((f"+88691234{i:04d}",)), NOW) for i in range(3)),
                store._committer.submit(raw_nul),
                *(store.accept(new((f"+88691235{i:04d}",)), NOW) for i in range(3)),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert isinstance(results[3], LedgerError)
        assert "\x00" not in str(results[3])
        assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 3)
        assert (await store.counts())[State.QUEUED] == 6
        assert await store.line_quarantines() == []
        assert store.write_error is None  # one caller's data, not the store
    finally:
        await store.close()
        await store.drop_schema()


async def test_postgres_ledger_of_the_previous_schema_gets_the_table() -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, script in enumerate(postgres.MIGRATIONS[:2], 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
    finally:
        await conn.close()
    ledger = PostgresLedger(PG_URL, schema=schema)
    await ledger.open()
    try:
        await ledger.quarantine_line("hq", "G101", "upgraded", NOW)
        assert [q.reason for q in await ledger.line_quarantines()] == ["upgraded"]
    finally:
        await ledger.close()
        await ledger.drop_schema()


def test_every_column_an_outcome_may_set_has_its_array_type() -> None:
    """A column `rules.transition` sets that _PLANNED_TYPES lacks fails, as a KeyError, every
    batch that writes it for two recipients or more."""
    columns: set[str] = set()
    for index, (current, wanted) in enumerate(product(State, State)):
        outcome = Outcome(
            index,
            wanted,
            task_id="7",
            upstream_id="u",
            error_code="c",
            error_meaning="m",
            retry_at=NOW + 60,
            exclude_line="hq/G101",
        )
        for planned in planned_updates({index: (current, [])}, [outcome], NOW):
            columns.update(name for names in planned for name in names)
    assert columns, "no outcome changed anything"
    assert columns <= set(postgres._PLANNED_TYPES)


@contextlib.asynccontextmanager
async def ledger_and_holder() -> AsyncIterator[tuple[PostgresLedger, asyncpg.Connection]]:
    """A ledger, and a connection of its schema to change or hold its rows from outside (as
    another instance would)."""
    store = PostgresLedger(PG_URL, schema=f"test_{uuid.uuid4().hex[:12]}")
    await store.open()
    holder = await asyncpg.connect(PG_URL, server_settings={"search_path": store.schema})
    try:
        yield store, holder
    finally:
        await holder.close()
        await store.close()
        await store.drop_schema()


async def test_postgresql_due_index_holds_queued_recipients_only() -> None:
    # No UPDATE of an indexed column is HOT: with every recipient in the due index, each
    # change of state wrote an entry into it. Hand-overs waiting for send_at have their own.
    async with ledger_and_holder() as (_, holder):
        where = {
            row[0]: row[1].partition(" WHERE ")[2]
            for row in await holder.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname IN ('recipients_due', 'recipients_handed_over')"
            )
        }
    assert where == {
        "recipients_due": "(state = 'queued'::text)",
        "recipients_handed_over": "((state = 'submitted'::text) AND (route <> 'goip'::text))",
    }


async def submitted(store: PostgresLedger, count: int) -> tuple[str, list[int]]:
    """A message to +88691234000{i}, its recipients submitted to "hq" as tasks "1" and on."""
    numbers = tuple(f"+88691234000{i}" for i in range(1, count + 1))
    message = (await store.accept(new(numbers), NOW)).message
    ids = [r.id for r in message.recipients]
    for task_id, rid in enumerate(ids, 1):
        await store.claim([Claim(rid, "goip", "hq", "G1")], NOW)
        await store.record([Outcome(rid, State.SUBMITTED, task_id=str(task_id))], NOW)
    return message.id, ids


async def test_a_report_waiting_for_its_recipient_does_not_hold_up_reports_of_others() -> None:
    # Reports are written on two connections at once: one whose recipient another
    # transaction holds (another instance's report, a cancel) waits alone.
    async with ledger_and_holder() as (store, holder):
        message_id, (held, free) = await submitted(store, 2)

        def sent(recipient: Recipient) -> tuple[Outcome | None, None]:
            return Outcome(recipient.id, State.SENT), None

        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM recipients WHERE id = $1 FOR UPDATE", held)
        waiting = asyncio.create_task(store.apply_to_task("hq", "1", "+886912340001", NOW, sent))
        await asyncio.sleep(0.2)
        found = await asyncio.wait_for(
            store.apply_to_task("hq", "2", "+886912340002", NOW, sent), timeout=5
        )
        assert found is not None and found[0].id == free
        assert not waiting.done()
        await lock.rollback()
        found = await asyncio.wait_for(waiting, timeout=5)
        assert found is not None and found[0].id == held
        stored = await store.get_message(message_id)
        assert stored is not None
        states = {r.id: r.state for r in stored.recipients}
        assert states == {held: State.SENT, free: State.SENT}


@pytest.mark.parametrize(
    ("meanwhile", "expected"),
    [
        # Cancelled after the report's read: decided again, on the state as it is now.
        ("state = 'cancelled'", State.CANCELLED),
        # Claimed and sent again under the same state: the report's task is no longer its.
        ("attempts = attempts + 1, task_id = '99'", None),
    ],
)
async def test_a_report_whose_recipient_changed_after_its_read_is_decided_again(
    meanwhile: str, expected: State | None
) -> None:
    # Reports read their recipients without a lock and write them only if unchanged; the
    # change here commits while the report's write waits for the row.
    async with ledger_and_holder() as (store, holder):
        message_id, [rid] = await submitted(store, 1)
        decided_on: list[State] = []

        def sent(recipient: Recipient) -> tuple[Outcome | None, None]:
            decided_on.append(recipient.state)
            return Outcome(recipient.id, State.SENT), None

        change = holder.transaction()
        await change.start()
        await holder.execute(f"UPDATE recipients SET {meanwhile} WHERE id = $1", rid)
        report = asyncio.create_task(store.apply_to_task("hq", "1", "+886912340001", NOW, sent))
        await asyncio.sleep(0.3)
        assert decided_on == [State.SUBMITTED] and not report.done()
        await change.commit()
        found = await asyncio.wait_for(report, timeout=5)
        stored = await store.get_message(message_id)
        assert stored is not None
        if expected is None:
            assert found is None and decided_on == [State.SUBMITTED]
            assert stored.recipients[0].state is State.SUBMITTED
        else:
            assert found is not None and found[0].state is expected
            assert decided_on == [State.SUBMITTED, expected]
            assert stored.recipients[0].state is expected


async def test_every_report_decided_on_a_changed_recipient_is_decided_again() -> None:
    # The second report decides nothing on what the first would have written; once the
    # first's write finds the recipient claimed again, neither result may stand.
    async with ledger_and_holder() as (store, holder):
        _, [rid] = await submitted(store, 1)

        def sent(recipient: Recipient) -> tuple[Outcome | None, State]:
            if recipient.state is State.SENT:
                return None, recipient.state
            return Outcome(recipient.id, State.SENT), recipient.state

        change = holder.transaction()
        await change.start()
        await holder.execute(
            "UPDATE recipients SET attempts = attempts + 1, task_id = '99' WHERE id = $1", rid
        )
        both = asyncio.gather(
            store.apply_to_task("hq", "1", "+886912340001", NOW, sent),
            store.apply_to_task("hq", "1", "+886912340001", NOW + 1, sent),
        )
        await asyncio.sleep(0.3)
        await change.commit()
        assert list(await asyncio.wait_for(both, timeout=5)) == [None, None]
