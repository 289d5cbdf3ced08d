"""Both ledger backends against one interface: durability, group commit, idempotency, and the
monotonic state machine (a recipient never moves backwards or out of a final state). The
PostgreSQL runs use the real server on 127.0.0.1:5432, one schema per test, dropped after."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from goipd.ledger.base import Claim, LedgerError, NewMessage, Outcome, State
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger, new_message_id

PG_URL = os.environ.get("GOIPD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
Ledger = SqliteLedger | PostgresLedger

NOW = 1_800_000_000.0


def new(
    numbers: tuple[str, ...] = ("+886912345678",),
    key: str | None = None,
    text: str = "hello",
    send_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        idempotency_key=key,
        send_at=send_at,
    )


@pytest.fixture
def make_ledger(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Ledger]:
    schema = f"test_{uuid.uuid4().hex[:12]}"

    def make() -> Ledger:
        if request.param == "sqlite":
            return SqliteLedger(tmp_path / "state" / "goipd.db")
        return PostgresLedger(PG_URL, schema=schema)

    return make


@pytest.fixture
async def ledger(make_ledger: Callable[[], Ledger]) -> AsyncIterator[Ledger]:
    store = make_ledger()
    await store.open()
    yield store
    await store.close()
    if isinstance(store, PostgresLedger):
        await store.drop_schema()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make_ledger" in metafunc.fixturenames:
        metafunc.parametrize("make_ledger", ["sqlite", "postgresql"], indirect=True)


async def test_accept_get_and_reopen(ledger: Ledger, make_ledger: Callable[[], Ledger]) -> None:
    result = await ledger.accept(new(("+886912345678", "+886912345679")), NOW)
    assert result.created
    message = await ledger.get_message(result.message.id)
    assert message == result.message
    assert [r.state for r in message.recipients] == [State.QUEUED, State.QUEUED]
    await ledger.close()
    again = make_ledger()
    await again.open()
    assert await again.get_message(result.message.id) == message
    await again.close()


async def test_concurrent_accepts_are_group_committed(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.accept(new((f"+8869123{i:05d}",)), NOW) for i in range(200))
    )
    assert len({r.message.id for r in results}) == 200
    assert ledger.commits < 200  # fewer fsyncs than callers
    assert (await ledger.counts())[State.QUEUED] == 200


async def test_idempotency_key_returns_the_original_even_within_one_batch(
    ledger: Ledger,
) -> None:
    results = await asyncio.gather(*(ledger.accept(new(key="order-1"), NOW) for _ in range(20)))
    assert len({r.message.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert (await ledger.counts())[State.QUEUED] == 1


async def test_claim_is_compare_and_set(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    assert await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW) == [rid]
    assert await ledger.claim([Claim(rid, "goip", "hq", "G102")], NOW) == []
    recipient = (await ledger.get_message(message.id)).recipients[0]  # type: ignore[union-attr]
    assert (recipient.state, recipient.line, recipient.attempts) == (State.DISPATCHING, "G101", 1)


async def state_of(ledger: Ledger, message_id: str) -> State:
    message = await ledger.get_message(message_id)
    assert message is not None
    return message.recipients[0].state


async def test_state_machine_never_moves_backwards(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="7", upstream_id="7.x")], NOW)
    # A receipt before the "succeeded" report: delivered, and the late report changes nothing.
    await ledger.record([Outcome(rid, State.DELIVERED)], NOW + 1)
    await ledger.record([Outcome(rid, State.SENT)], NOW + 2)
    await ledger.record([Outcome(rid, State.SUBMITTED)], NOW + 3)
    await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW)], NOW + 4)
    await ledger.record([Outcome(rid, State.FAILED, error_code="331")], NOW + 5)
    recipient = (await ledger.get_message(message.id)).recipients[0]  # type: ignore[union-attr]
    assert recipient.state is State.DELIVERED
    assert recipient.sent_at == NOW + 1 and recipient.delivered_at == NOW + 1
    assert recipient.error_code is None


async def test_retry_path_and_excluded_lines(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW)
    await ledger.record(
        [
            Outcome(
                rid,
                State.QUEUED,
                error_code="331",
                error_meaning="x",
                retry_at=NOW + 5,
                exclude_line="hq/G101",
            )
        ],
        NOW + 1,
    )
    assert await ledger.due(NOW + 4, 10) == []
    (due,) = await ledger.due(NOW + 5, 10)
    assert due.excluded_lines == ("hq/G101",)
    assert due.error_code == "331"
    # A sent recipient is never queued again.
    await ledger.claim([Claim(rid, "goip", "hq", "G102")], NOW + 6)
    await ledger.record([Outcome(rid, State.SENT)], NOW + 7)
    await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW)], NOW + 8)
    assert await state_of(ledger, message.id) is State.SENT


async def test_find_by_task_with_and_without_plus(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="5689")], NOW)
    assert (await ledger.find_by_task("hq", "5689", "+886912345678")).id == rid  # type: ignore[union-attr]
    assert (await ledger.find_by_task("hq", "5689", "886912345678")).id == rid  # type: ignore[union-attr]
    assert await ledger.find_by_task("other", "5689", "886912345678") is None
    assert await ledger.max_task_id("hq") == 5689
    assert await ledger.max_task_id("other") is None


async def test_find_by_upstream_id(ledger: Ledger) -> None:
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    ids = [r.id for r in message.recipients]
    await ledger.claim([Claim(rid, "smsgo", None, None) for rid in ids], NOW)
    await ledger.record(
        [Outcome(rid, State.SUBMITTED, upstream_id="1504280910499665") for rid in ids], NOW
    )
    found = await ledger.find_by_upstream("smsgo", "1504280910499665")
    assert [r.id for r in found] == ids
    assert await ledger.find_by_upstream("paasoo", "1504280910499665") == []


async def test_upgrade_from_schema_1(tmp_path: Path) -> None:
    from goipd.ledger.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.commit()
    conn.close()
    store = SqliteLedger(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "recipients_upstream" in indexes
    conn.close()


async def test_scheduled_due_and_cancel(ledger: Ledger) -> None:
    later = (await ledger.accept(new(send_at=NOW + 60), NOW)).message
    now_msg = (await ledger.accept(new(("+886912345670",)), NOW)).message
    assert [r.message_id for r in await ledger.due(NOW, 10)] == [now_msg.id]
    cancelled = await ledger.cancel(later.id, NOW)
    assert cancelled is not None and cancelled.recipients[0].state is State.CANCELLED
    assert await ledger.due(NOW + 120, 10) == [
        r for r in await ledger.due(NOW + 120, 10) if r.message_id == now_msg.id
    ]
    assert await ledger.cancel("01NOSUCHMESSAGE0000000000", NOW) is None


async def test_duplicate_guard_and_queue_figures(ledger: Ledger) -> None:
    first = (await ledger.accept(new(text="code 1234"), NOW)).message
    assert await ledger.recent_duplicate("+886912345678", "code 1234", NOW - 600) == first.id
    assert await ledger.recent_duplicate("+886912345678", "code 9999", NOW - 600) is None
    assert await ledger.recent_duplicate("+886912345678", "code 1234", NOW + 1) is None
    assert await ledger.oldest_pending(NOW) == NOW
    counts = await ledger.counts()
    assert set(counts) == set(State)
    assert counts[State.QUEUED] == 1
    await ledger.accept(new(("+886912345670",), send_at=NOW + 3600), NOW - 100)
    assert await ledger.oldest_pending(NOW) == NOW  # scheduled for later: not backlog
    assert await ledger.oldest_pending(NOW + 3600) == NOW - 100


async def test_inbound_and_outbox(ledger: Ledger) -> None:
    inbound_id = await ledger.add_inbound(
        "hq",
        "G101",
        "10086",
        None,
        "餘額",
        "2019-09-26 15:26:05",
        NOW,
        forward_to=("http://127.0.0.1:1/a", "http://127.0.0.1:1/b"),
    )
    (record,) = await ledger.list_inbound(10, None)
    assert (record.id, record.content) == (inbound_id, "餘額")
    items = await ledger.outbox_due(NOW, 10)
    assert {item.url for item in items} == {"http://127.0.0.1:1/a", "http://127.0.0.1:1/b"}
    await ledger.outbox_result(items[0].id, done=True, retry_at=None, error=None, now=NOW)
    await ledger.outbox_result(items[1].id, done=False, retry_at=NOW + 10, error="timeout", now=NOW)
    assert await ledger.outbox_due(NOW + 5, 10) == []
    (retry,) = await ledger.outbox_due(NOW + 10, 10)
    assert retry.attempts == 1
    await ledger.outbox_result(retry.id, done=False, retry_at=None, error="gave up", now=NOW)
    assert await ledger.outbox_due(NOW + 1000, 10) == []


async def test_list_messages_paging_and_filters(ledger: Ledger) -> None:
    ids = [(await ledger.accept(new((f"+88691234567{i}",)), NOW + i)).message.id for i in range(5)]
    page = await ledger.list_messages(None, None, 2, None)
    assert [m.id for m in page] == ids[::-1][:2]
    page2 = await ledger.list_messages(None, None, 2, page[-1].id)
    assert [m.id for m in page2] == ids[::-1][2:4]
    assert [m.id for m in await ledger.list_messages(None, NOW + 3, 10, None)] == ids[::-1][:2]
    rid = page[0].recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
    # dispatching is shown as submitted
    assert [m.id for m in await ledger.list_messages(State.SUBMITTED, None, 10, None)] == [
        page[0].id
    ]


async def test_future_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "goipd.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    store = SqliteLedger(path)
    with pytest.raises(LedgerError, match="schema version 99 is newer than this goipd supports"):
        await store.open()


async def test_write_errors_become_ledger_errors_and_the_ledger_recovers(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "goipd.db")
    await ledger.open()
    # Root ignores file permissions, so make the writer connection itself refuse writes: the
    # same sqlite3.OperationalError path as a read-only or full disk.
    assert ledger._writer is not None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(ledger._writer_pool, ledger._writer.execute, "PRAGMA query_only=ON")
    with pytest.raises(LedgerError, match=r"readonly|read-only|query_only|attempt to write"):
        await ledger.accept(new(), NOW)
    await loop.run_in_executor(ledger._writer_pool, ledger._writer.execute, "PRAGMA query_only=OFF")
    assert (await ledger.accept(new(), NOW)).created
    assert (await ledger.counts())[State.QUEUED] == 1
    await ledger.close()


def test_message_ids_sort_by_time() -> None:
    ids = [new_message_id(NOW + i / 1000) for i in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    assert all(len(i) == 26 for i in ids)
