"""Cloud delivery reports held until their send is recorded, and when failed hand-overs of
scheduled cloud sends may be tried again (goipd/reports/cloud.py, goipd/dispatch/dispatcher.py).
On PostgreSQL: the `HeldStore` role of goipd/ledger/base.py.

Every instance retries held reports, so a report is taken for each try with FOR UPDATE SKIP
LOCKED: two instances taking at once take different reports, and one taken is not due again
before its take time has passed. No statement here waits for a row another instance's take
holds, so none can deadlock with one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.held import HeldKey, HeldReport
from goipd.ledger.held_sqlite import HELD_COLUMNS, LIVE_STATES, held_from_row, held_key, held_values

T = TypeVar("T")
KEY = "(provider, upstream_id, number)"


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in HELD_COLUMNS.split(","))


class PostgresHeldStore:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def hold_report(self, report: HeldReport, limit: int) -> tuple[bool, list[HeldReport]]:
        values = held_values(report)

        async def op(conn: asyncpg.Connection) -> tuple[bool, list[HeldReport]]:
            # xmax = 0: the row was inserted by this statement, not updated.
            inserted = await conn.fetchval(
                f"INSERT INTO held_reports ({HELD_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                f" ON CONFLICT {KEY} DO UPDATE SET state = EXCLUDED.state,"
                " code = EXCLUDED.code, meaning = EXCLUDED.meaning RETURNING (xmax = 0)",
                *values,
            )
            if not inserted:
                return False, []
            # The newest `limit` stay: the oldest is the least likely ever to match (a send
            # goipd did not make). Rows another instance is taking are skipped, not waited for.
            dropped = await conn.fetch(
                f"DELETE FROM held_reports WHERE {KEY} IN (SELECT {KEY[1:-1]} FROM"
                " held_reports ORDER BY held_at DESC, provider DESC, upstream_id DESC,"
                f" number DESC OFFSET $1 FOR UPDATE SKIP LOCKED) RETURNING {HELD_COLUMNS}",
                max(limit, 1),
            )
            return True, [held_from_row(row) for row in dropped]

        return await self._write(op)

    async def held_reports_summary(self) -> tuple[int, float | None, float | None]:
        async def op(conn: asyncpg.Connection) -> tuple[int, float | None, float | None]:
            row = await conn.fetchrow(
                "SELECT count(*), min(next_try), min(held_at) FROM held_reports"
            )
            assert row is not None
            return int(row[0]), row[1], row[2]

        return await self._read(op)

    async def take_held_reports(
        self, now: float, keep_for: float, take_for: float, limit: int
    ) -> tuple[list[HeldReport], list[HeldReport]]:
        async def op(conn: asyncpg.Connection) -> tuple[list[HeldReport], list[HeldReport]]:
            rows = await conn.fetch(
                f"WITH expired AS (DELETE FROM held_reports WHERE {KEY} IN ("
                f"  SELECT {KEY[1:-1]} FROM held_reports WHERE held_at < $1"
                f"  FOR UPDATE SKIP LOCKED) RETURNING {HELD_COLUMNS}, TRUE AS gone),"
                f" due AS (SELECT {KEY[1:-1]} FROM held_reports"
                "  WHERE next_try <= $2 AND held_at >= $1 ORDER BY next_try LIMIT $3"
                "  FOR UPDATE SKIP LOCKED),"
                " taken AS (UPDATE held_reports h SET next_try = $4 FROM due"
                "  WHERE h.provider = due.provider AND h.upstream_id = due.upstream_id"
                f"  AND h.number = due.number RETURNING {_prefixed('h')}, FALSE AS gone)"
                " SELECT * FROM expired UNION ALL SELECT * FROM taken",
                now - keep_for,
                now,
                limit,
                now + take_for,
            )
            taken = [held_from_row(tuple(row)[:-1]) for row in rows if not row["gone"]]
            expired = [held_from_row(tuple(row)[:-1]) for row in rows if row["gone"]]
            return taken, expired

        return await self._write(op)

    async def settle_held_reports(
        self, matched: Collection[HeldKey], again: Sequence[tuple[HeldKey, float, float]]
    ) -> None:
        gone = [held_key(key) for key in matched]
        later = [(held_key(key), next_try, wait) for key, next_try, wait in again]
        if not gone and not later:
            return

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "WITH gone AS (DELETE FROM held_reports h"
                "  USING unnest($1::text[], $2::text[], $3::text[]) AS k(p, u, n)"
                "  WHERE h.provider = k.p AND h.upstream_id = k.u AND h.number = k.n)"
                " UPDATE held_reports h SET next_try = k.t, wait = k.w"
                " FROM unnest($4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[])"
                " AS k(p, u, n, t, w)"
                " WHERE h.provider = k.p AND h.upstream_id = k.u AND h.number = k.n",
                [k[0] for k in gone],
                [k[1] for k in gone],
                [k[2] for k in gone],
                [k[0][0] for k in later],
                [k[0][1] for k in later],
                [k[0][2] for k in later],
                [k[1] for k in later],
                [k[2] for k in later],
            )

        await self._write(op)

    async def handover_retries(
        self, recipient_ids: Collection[int]
    ) -> dict[int, tuple[int, float]]:
        ids = list(recipient_ids)
        if not ids:
            return {}

        async def op(conn: asyncpg.Connection) -> dict[int, tuple[int, float]]:
            rows = await conn.fetch(
                "SELECT recipient_id, attempts, retry_at FROM handover_retries"
                " WHERE recipient_id = ANY($1::bigint[])",
                ids,
            )
            return {int(row[0]): (int(row[1]), float(row[2])) for row in rows}

        return await self._read(op)

    async def set_handover_retries(
        self, retries: Mapping[int, tuple[int, float]], now: float, keep_for: float, limit: int
    ) -> None:
        ordered = sorted(retries.items())  # rows locked in one order by every instance

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO handover_retries (recipient_id, attempts, retry_at)"
                " SELECT * FROM unnest($1::bigint[], $2::int[], $3::float8[]) ORDER BY 1"
                " ON CONFLICT (recipient_id) DO UPDATE SET attempts = EXCLUDED.attempts,"
                " retry_at = EXCLUDED.retry_at",
                [rid for rid, _ in ordered],
                [attempts for _, (attempts, _) in ordered],
                [retry_at for _, (_, retry_at) in ordered],
            )
            # Only passed retry times are looked at (the index on retry_at): a void row is
            # harmless until then. Rows another instance is writing are left to it.
            await conn.execute(
                "DELETE FROM handover_retries WHERE recipient_id IN (SELECT h.recipient_id"
                " FROM handover_retries h WHERE h.retry_at < $1 AND (h.retry_at < $2 OR"
                " NOT EXISTS (SELECT 1 FROM recipients r WHERE r.id = h.recipient_id"
                f" AND r.attempts = h.attempts AND r.state IN {LIVE_STATES}))"
                " FOR UPDATE OF h SKIP LOCKED)",
                now,
                now - keep_for,
            )
            await conn.execute(
                "DELETE FROM handover_retries WHERE recipient_id IN (SELECT recipient_id"
                " FROM handover_retries ORDER BY retry_at DESC, recipient_id DESC OFFSET $1"
                " FOR UPDATE SKIP LOCKED)",
                max(limit, 0),
            )

        await self._write(op)

    async def clear_handover_retries(self, recipient_ids: Collection[int]) -> None:
        ids = sorted(recipient_ids)
        if not ids:
            return

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM handover_retries WHERE recipient_id = ANY($1::bigint[])", ids
            )

        await self._write(op)
