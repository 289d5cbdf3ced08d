"""What the PostgreSQL ledger keeps about GoIP SMS Servers beside their recipients: inbound SMS
matched between pushes and inbox reads, how far each inbox was read, whether a server's engine
moved anything on, and the tasks goipd gave up on while the server holds them
(goipd/inbound/inbox.py, goipd/reports/stalls.py). The rules are described on the `Ledger`
roles in base.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.rows import storable, storable_or_none, task_key
from goipd.ledger.servers_sqlite import ABANDONED_KEEP
from goipd.model import GoipInbound, Recipient

T = TypeVar("T")


async def insert_inbound(
    conn: asyncpg.Connection,
    values: tuple[str, str | None, str, str | None, str, float, str],
    forward_to: Sequence[str],
    *,
    inbox_id: int | None = None,
) -> int:
    """One inbound row (source, line, from, to, content, received_at, upstream_time) and its
    outbox rows; returns its id."""
    inbound_id = int(
        await conn.fetchval(
            "INSERT INTO inbound (source, line, from_number, to_number, content, received_at,"
            " upstream_time, inbox_id, pushed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " RETURNING id",
            *values,
            inbox_id,
            inbox_id is None,
        )
    )
    if forward_to:
        await conn.executemany(
            "INSERT INTO outbox (inbound_id, url, next_at) VALUES ($1, $2, $3)",
            [(inbound_id, storable(url), values[5]) for url in forward_to],
        )
    return inbound_id


class PostgresServerRecords:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def add_goip_inbound(
        self, sms: GoipInbound, now: float, forward_to: Sequence[str] = ()
    ) -> tuple[int, bool]:
        server, number = storable(sms.server), storable(sms.from_number)
        content, received = storable(sms.content), storable(sms.upstream_time)
        line = storable_or_none(sms.line)
        same = (
            "SELECT id FROM inbound WHERE source = $1 AND from_number = $2 AND upstream_time = $3"
            " AND content = $4 AND {} ORDER BY id LIMIT 1"
        )

        async def op(conn: asyncpg.Connection) -> tuple[int, bool]:
            # A push on one instance and an inbox read on another may hold the same SMS: the
            # match and the insert happen under the server's lock, until the commit.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('goipd.inbound:' || $1))", server
            )
            key = (server, number, received, content)
            if sms.inbox_id is None:
                found = await conn.fetchval(same.format("NOT pushed"), *key)
                if found is not None:
                    await conn.execute("UPDATE inbound SET pushed = TRUE WHERE id = $1", found)
                    return int(found), False
            else:
                found = await conn.fetchval(
                    "SELECT id FROM inbound WHERE source = $1 AND inbox_id = $2",
                    server,
                    sms.inbox_id,
                )
                if found is not None:
                    return int(found), False
                found = await conn.fetchval(same.format("inbox_id IS NULL"), *key)
                if found is not None:
                    # A push of a renamed line said null: the inbox still names the line.
                    await conn.execute(
                        "UPDATE inbound SET inbox_id = $1, line = COALESCE(line, $2) WHERE id = $3",
                        sms.inbox_id,
                        line,
                        found,
                    )
                    return int(found), False
            values = (server, line, number, None, content, now, received)
            return await insert_inbound(conn, values, forward_to, inbox_id=sms.inbox_id), True

        return await self._write(op)

    async def inbox_watermark(self, server: str) -> str | None:
        async def op(conn: asyncpg.Connection) -> str | None:
            found = await conn.fetchval(
                "SELECT covered_from FROM inbox_reads WHERE server = $1", server
            )
            return None if found is None else str(found)

        return await self._read(op)

    async def set_inbox_watermark(self, server: str, received: str, now: float) -> None:
        received = storable(received)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO inbox_reads (server, covered_from, read_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (server) DO UPDATE SET covered_from = excluded.covered_from,"
                " read_at = excluded.read_at",
                server,
                received,
                now,
            )

        await self._write(op)

    async def progress_since(self, server: str, reported_after: float, handed_after: float) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            # The partial index on (server, submitted_at) bounds this to the recent sends.
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM recipients WHERE server = $1"
                    " AND task_id IS NOT NULL AND submitted_at >= $2 AND (sent_at >= $3"
                    " OR (state = 'failed' AND error_code ~ '^[0-9]' AND updated_at >= $3)))",
                    server,
                    handed_after,
                    reported_after,
                )
            )

        return await self._read(op)

    async def abandon_tasks(
        self, server: str, abandoned: Sequence[Recipient], kind: str, now: float
    ) -> None:
        rows = [
            (server, storable(r.task_id), storable(r.number), r.id, kind, now)
            for r in abandoned
            if r.task_id is not None
        ]

        async def op(conn: asyncpg.Connection) -> None:
            if rows:
                await conn.executemany(
                    "INSERT INTO abandoned_tasks (server, task_id, number, recipient_id, kind,"
                    " abandoned_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT"
                    " (server, task_id, number) DO UPDATE SET kind = excluded.kind",
                    rows,
                )
            await conn.execute(
                "DELETE FROM abandoned_tasks WHERE abandoned_at < $1", now - ABANDONED_KEEP
            )

        await self._write(op)

    async def late_send(self, server: str, task_id: str, number: str) -> tuple[int, str] | None:
        server, task_id, number, plus = task_key(server, task_id, number)

        async def op(conn: asyncpg.Connection) -> tuple[int, str] | None:
            row = await conn.fetchrow(
                "UPDATE abandoned_tasks SET counted = TRUE WHERE server = $1 AND task_id = $2"
                " AND number = ANY($3::text[]) AND NOT counted RETURNING recipient_id, kind",
                server,
                task_id,
                [number, plus, number.lstrip("+")],
            )
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._write(op)
