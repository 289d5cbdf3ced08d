"""Line balances and remediations (goipd/ledger/upkeep.py). On PostgreSQL: the `LineUpkeep` role
of goipd/ledger/base.py. Several instances may act on one ledger: a remediation's checks and
insert run under a transaction-level advisory lock of its server, so of two instances starting
remediations of one server at once the second sees what the first wrote (the same incident, the
line's cooldown, the server's lines under way)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.rows import storable, storable_or_none
from goipd.ledger.upkeep import (
    BALANCE_COLUMNS,
    PENDING,
    REMEDIATION_COLUMNS,
    LineBalance,
    Remediation,
    balance_from_row,
    remediation_from_row,
)
from goipd.ledger.upkeep_sqlite import KEEP_REMEDIATIONS, START_CHECKS

T = TypeVar("T")


class PostgresLineUpkeep:
    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def record_balance(
        self, server: str, line: str, balance: float, answer: str, now: float
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO line_balances ({BALANCE_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL) ON CONFLICT (server, line)"
                " DO UPDATE SET balance = EXCLUDED.balance, answer = EXCLUDED.answer,"
                " read_at = EXCLUDED.read_at, error_reason = NULL, error = NULL, error_at = NULL",
                storable(server),
                storable(line),
                balance,
                storable(answer),
                now,
            )

        await self._write(op)

    async def record_balance_error(
        self, server: str, line: str, reason: str, error: str, now: float
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO line_balances ({BALANCE_COLUMNS})"
                " VALUES ($1, $2, NULL, NULL, NULL, $3, $4, $5) ON CONFLICT (server, line)"
                " DO UPDATE SET error_reason = EXCLUDED.error_reason, error = EXCLUDED.error,"
                " error_at = EXCLUDED.error_at",
                storable(server),
                storable(line),
                reason,
                storable(error),
                now,
            )

        await self._write(op)

    async def line_balances(self) -> list[LineBalance]:
        async def op(conn: asyncpg.Connection) -> list[LineBalance]:
            rows = await conn.fetch(
                f"SELECT {BALANCE_COLUMNS} FROM line_balances ORDER BY server, line"
            )
            return [balance_from_row(tuple(row)) for row in rows]

        return await self._read(op)

    async def start_remediation(
        self,
        server: str,
        line: str,
        incident: str,
        incident_since: float,
        action: str,
        now: float,
        *,
        cooldown: float,
        max_per_server: int,
    ) -> Remediation | None:
        async def op(conn: asyncpg.Connection) -> Remediation | None:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('goipd.remediation.' || $1))",
                storable(server),
            )
            await conn.execute(
                "DELETE FROM line_remediations WHERE result <> 'pending' AND started_at < $1",
                now - KEEP_REMEDIATIONS,
            )
            row = await conn.fetchrow(
                f"INSERT INTO line_remediations ({REMEDIATION_COLUMNS})"
                " SELECT $1, $2, $3::float8, $4, $5, $6, $7::float8, 'pending', NULL, NULL WHERE "
                + START_CHECKS.format("$1", "$2", "$3::float8", "$8::float8", "$9::int")
                + f" ON CONFLICT DO NOTHING RETURNING {REMEDIATION_COLUMNS}",
                storable(server),
                storable(line),
                incident_since,
                incident,
                action,
                self.instance_id,
                now,
                now - cooldown,
                max_per_server,
            )
            return None if row is None else remediation_from_row(tuple(row))

        return await self._write(op)

    async def finish_remediation(
        self,
        server: str,
        line: str,
        incident_since: float,
        result: str,
        detail: str | None,
        now: float,
    ) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            done: str = await conn.execute(
                "UPDATE line_remediations SET result = $1, detail = $2, finished_at = $3"
                " WHERE server = $4 AND line = $5 AND incident_since = $6 AND result = $7",
                result,
                storable_or_none(detail),
                now,
                storable(server),
                storable(line),
                incident_since,
                PENDING,
            )
            return done.rpartition(" ")[2] != "0"

        return await self._write(op)

    async def remediations(self, since: float) -> list[Remediation]:
        async def op(conn: asyncpg.Connection) -> list[Remediation]:
            rows = await conn.fetch(
                f"SELECT {REMEDIATION_COLUMNS} FROM line_remediations"
                " WHERE started_at >= $1 OR result = 'pending' ORDER BY started_at",
                since,
            )
            return [remediation_from_row(tuple(row)) for row in rows]

        return await self._read(op)
