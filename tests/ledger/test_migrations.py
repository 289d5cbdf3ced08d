"""Schema migrations: a fresh SQLite file gets every one and reopening changes nothing, an old
file is upgraded with its data, a newer schema is refused; ledgers of the previous schema get
the line quarantine table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from goipd.ledger.migrations import LATEST, MIGRATIONS, migrate
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import LedgerError
from tests.helpers.ledgers import NOW, new


def schema_versions(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        conn.close()


async def test_sqlite_fresh_database_gets_every_migration_and_reopening_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "dir" / "goipd.db"
    store = SqliteLedger(path)
    await store.open()
    message = (await store.accept(new(), NOW)).message
    await store.close()
    assert stat_mode(path.parent) == 0o700
    assert schema_versions(path) == list(range(1, LATEST + 1))
    store = SqliteLedger(path)
    await store.open()
    assert await store.get_message(message.id) == message
    await store.close()
    assert schema_versions(path) == list(range(1, LATEST + 1))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_sqlite_upgrade_from_schema_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute(
        "INSERT INTO messages (id, created_at, text, segments, encoding) "
        "VALUES ('01JAAAAAAAAAAAAAAAAAAAAAAA', ?, 'hi', 1, 'GSM-7')",
        (NOW,),
    )
    conn.execute(
        "INSERT INTO recipients (message_id, number, state, next_attempt_at, server, task_id,"
        " text_hash, created_at, updated_at) VALUES ('01JAAAAAAAAAAAAAAAAAAAAAAA',"
        " '+886912345678', 'submitted', ?, 'hq', '41', 'h', ?, ?)",
        (NOW, NOW, NOW),
    )
    conn.commit()
    conn.close()
    store = SqliteLedger(path)
    await store.open()
    try:
        found = await store.find_by_task("hq", "41", "886912345678")
        assert found is not None and found.message_id == "01JAAAAAAAAAAAAAAAAAAAAAAA"
        assert await store.max_task_id("hq") == 41
    finally:
        await store.close()
    assert schema_versions(path) == list(range(1, LATEST + 1))
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert {"recipients_upstream", "recipients_task", "recipients_task_max"} <= indexes


async def test_sqlite_future_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "goipd.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    store = SqliteLedger(path)
    with pytest.raises(
        LedgerError,
        match=rf"ledger schema version 99 is newer than this goipd supports \({LATEST}\)",
    ):
        await store.open()
    await store.close()  # nothing to release, and no error
    assert schema_versions(path) == [99]


async def test_sqlite_ledger_of_the_previous_schema_gets_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:3])
    conn.close()
    ledger = SqliteLedger(path)
    await ledger.open()
    try:
        await ledger.quarantine_line("hq", "G101", "upgraded", NOW)
        assert [q.reason for q in await ledger.line_quarantines()] == ["upgraded"]
    finally:
        await ledger.close()


async def test_sqlite_due_index_holds_queued_recipients_only(tmp_path: Path) -> None:
    # Every change of state past the queue (a report, a claim) would otherwise move an entry
    # of the due index; hand-overs waiting for their send_at have an index of their own.
    path = tmp_path / "goipd.db"
    store = SqliteLedger(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        where = dict(
            conn.execute(
                "SELECT name, substr(sql, instr(sql, 'WHERE')) FROM sqlite_master "
                "WHERE name IN ('recipients_due', 'recipients_handed_over')"
            ).fetchall()
        )
        plan = " ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE state = 'queued' "
                "AND priority = 1 AND next_attempt_at <= 0 ORDER BY next_attempt_at, id LIMIT 5"
            )
        )
    finally:
        conn.close()
    assert where == {
        "recipients_due": "WHERE state = 'queued'",
        "recipients_handed_over": "WHERE state = 'submitted' AND route <> 'goip'",
    }
    assert "USING INDEX recipients_due" in plan and "TEMP B-TREE" not in plan
