"""What the SQLite ledger keeps about GoIP SMS Servers beside their recipients: inbound SMS
matched between pushes and inbox reads, how far each inbox was read, whether a server's engine
moved anything on, and the tasks goipd gave up on while the server holds them
(goipd/inbound/inbox.py, goipd/reports/stalls.py). The rules are described on the `Ledger`
roles in base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from goipd.ledger.rows import storable, storable_or_none, task_key
from goipd.model import GoipInbound, Recipient

T = TypeVar("T")
ABANDONED_KEEP = 2 * 86400.0
"""Seconds an abandoned task is remembered: the engine sends nothing queued over a day ago."""


def insert_inbound(
    conn: sqlite3.Connection,
    values: tuple[str, str | None, str, str | None, str, float, str],
    forward_to: Sequence[str],
    *,
    inbox_id: int | None = None,
) -> int:
    """One inbound row (source, line, from, to, content, received_at, upstream_time) and its
    outbox rows; returns its id."""
    cursor = conn.execute(
        "INSERT INTO inbound (source, line, from_number, to_number, content, received_at,"
        " upstream_time, inbox_id, pushed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*values, inbox_id, 1 if inbox_id is None else 0),
    )
    inbound_id = cursor.lastrowid
    assert inbound_id is not None
    conn.executemany(
        "INSERT INTO outbox (inbound_id, url, attempts, next_at, done) VALUES (?, ?, 0, ?, 0)",
        [(inbound_id, storable(url), values[5]) for url in forward_to],
    )
    return inbound_id


class SqliteServerRecords:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def add_goip_inbound(
        self, sms: GoipInbound, now: float, forward_to: Sequence[str] = ()
    ) -> tuple[int, bool]:
        server, number = storable(sms.server), storable(sms.from_number)
        content, received = storable(sms.content), storable(sms.upstream_time)
        line = storable_or_none(sms.line)
        same = (
            "SELECT id FROM inbound WHERE source = ? AND from_number = ? AND upstream_time = ?"
            " AND content = ? AND {} ORDER BY id LIMIT 1"
        )

        def op(conn: sqlite3.Connection) -> tuple[int, bool]:
            key = (server, number, received, content)
            if sms.inbox_id is None:
                row = conn.execute(same.format("pushed = 0"), key).fetchone()
                if row is not None:
                    conn.execute("UPDATE inbound SET pushed = 1 WHERE id = ?", (row[0],))
                    return int(row[0]), False
            else:
                row = conn.execute(
                    "SELECT id FROM inbound WHERE source = ? AND inbox_id = ?",
                    (server, sms.inbox_id),
                ).fetchone()
                if row is not None:
                    return int(row[0]), False
                row = conn.execute(same.format("inbox_id IS NULL"), key).fetchone()
                if row is not None:
                    # A push of a renamed line said null: the inbox still names the line.
                    conn.execute(
                        "UPDATE inbound SET inbox_id = ?, line = COALESCE(line, ?) WHERE id = ?",
                        (sms.inbox_id, line, row[0]),
                    )
                    return int(row[0]), False
            values = (server, line, number, None, content, now, received)
            return insert_inbound(conn, values, forward_to, inbox_id=sms.inbox_id), True

        return await self._write(op)

    async def inbox_watermark(self, server: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT covered_from FROM inbox_reads WHERE server = ?", (server,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(op)

    async def set_inbox_watermark(self, server: str, received: str, now: float) -> None:
        received = storable(received)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO inbox_reads (server, covered_from, read_at) VALUES (?, ?, ?)"
                " ON CONFLICT (server) DO UPDATE SET covered_from = excluded.covered_from,"
                " read_at = excluded.read_at",
                (server, received, now),
            )

        await self._write(op)

    async def progress_since(self, server: str, reported_after: float, handed_after: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            # The partial index on (server, submitted_at) bounds this to the recent sends.
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM recipients WHERE server = ?"
                " AND task_id IS NOT NULL AND submitted_at >= ? AND (sent_at >= ?"
                " OR (state = 'failed' AND error_code GLOB '[0-9]*' AND updated_at >= ?)))",
                (server, handed_after, reported_after, reported_after),
            ).fetchone()
            return bool(row[0])

        return await self._read(op)

    async def abandon_tasks(
        self, server: str, abandoned: Sequence[Recipient], kind: str, now: float
    ) -> None:
        rows = [
            (server, storable(r.task_id), storable(r.number), r.id, kind, now)
            for r in abandoned
            if r.task_id is not None
        ]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO abandoned_tasks (server, task_id, number, recipient_id, kind,"
                " abandoned_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " kind = excluded.kind",
                rows,
            )
            conn.execute(
                "DELETE FROM abandoned_tasks WHERE abandoned_at < ?", (now - ABANDONED_KEEP,)
            )

        await self._write(op)

    async def late_send(self, server: str, task_id: str, number: str) -> tuple[int, str] | None:
        server, task_id, number, plus = task_key(server, task_id, number)

        def op(conn: sqlite3.Connection) -> tuple[int, str] | None:
            row = conn.execute(
                "UPDATE abandoned_tasks SET counted = 1 WHERE server = ? AND task_id = ?"
                " AND number IN (?, ?, ?) AND counted = 0 RETURNING recipient_id, kind",
                (server, task_id, number, plus, number.lstrip("+")),
            ).fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._write(op)
