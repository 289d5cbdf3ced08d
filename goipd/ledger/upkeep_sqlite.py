"""Line balances and remediations (goipd/ledger/upkeep.py). On SQLite: the `LineUpkeep` role of
goipd/ledger/base.py. One SQLite file has one writer, so a remediation's checks (same incident,
cooldown, lines of the server under way) and its insert run in one transaction with nothing
between them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

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

T = TypeVar("T")
KEEP_REMEDIATIONS: Final = 90 * 86400.0
"""Finished remediations are kept this long: the history an operator looks back on."""

START_CHECKS = (
    "NOT EXISTS (SELECT 1 FROM line_remediations WHERE server = {0} AND line = {1}"
    " AND (incident_since = {2} OR started_at > {3}))"
    " AND (SELECT COUNT(*) FROM line_remediations WHERE server = {0} AND result = 'pending')"
    " < {4}"
)
"""A remediation may start: none for this incident, none of the line within the cooldown
({3}: now - cooldown), fewer than {4} of the server's lines under way."""


class SqliteLineUpkeep:
    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def record_balance(
        self, server: str, line: str, balance: float, answer: str, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO line_balances ({BALANCE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL) ON CONFLICT (server, line) DO UPDATE"
                " SET balance = excluded.balance, answer = excluded.answer,"
                " read_at = excluded.read_at, error_reason = NULL, error = NULL, error_at = NULL",
                (storable(server), storable(line), balance, storable(answer), now),
            )

        await self._write(op)

    async def record_balance_error(
        self, server: str, line: str, reason: str, error: str, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO line_balances ({BALANCE_COLUMNS})"
                " VALUES (?, ?, NULL, NULL, NULL, ?, ?, ?) ON CONFLICT (server, line) DO UPDATE"
                " SET error_reason = excluded.error_reason, error = excluded.error,"
                " error_at = excluded.error_at",
                (storable(server), storable(line), reason, storable(error), now),
            )

        await self._write(op)

    async def line_balances(self) -> list[LineBalance]:
        def op(conn: sqlite3.Connection) -> list[LineBalance]:
            rows = conn.execute(
                f"SELECT {BALANCE_COLUMNS} FROM line_balances ORDER BY server, line"
            ).fetchall()
            return [balance_from_row(row) for row in rows]

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
        key = (storable(server), storable(line))

        def op(conn: sqlite3.Connection) -> Remediation | None:
            conn.execute(
                "DELETE FROM line_remediations WHERE result <> 'pending' AND started_at < ?",
                (now - KEEP_REMEDIATIONS,),
            )
            row = conn.execute(
                f"INSERT INTO line_remediations ({REMEDIATION_COLUMNS})"
                " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', NULL, NULL WHERE "
                + START_CHECKS.format("?1", "?2", "?3", "?8", "?9")
                + f" RETURNING {REMEDIATION_COLUMNS}",
                (
                    *key,
                    incident_since,
                    incident,
                    action,
                    self.instance_id,
                    now,
                    now - cooldown,
                    max_per_server,
                ),
            ).fetchone()
            return None if row is None else remediation_from_row(row)

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
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE line_remediations SET result = ?, detail = ?, finished_at = ?"
                " WHERE server = ? AND line = ? AND incident_since = ? AND result = ?",
                (
                    result,
                    storable_or_none(detail),
                    now,
                    storable(server),
                    storable(line),
                    incident_since,
                    PENDING,
                ),
            )
            return cursor.rowcount > 0

        return await self._write(op)

    async def remediations(self, since: float) -> list[Remediation]:
        def op(conn: sqlite3.Connection) -> list[Remediation]:
            rows = conn.execute(
                f"SELECT {REMEDIATION_COLUMNS} FROM line_remediations"
                " WHERE started_at >= ? OR result = 'pending' ORDER BY started_at",
                (since,),
            ).fetchall()
            return [remediation_from_row(row) for row in rows]

        return await self._read(op)
