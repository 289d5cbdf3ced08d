"""Routing decisions every instance on the ledger shares: quarantines after line errors and
providers disabled after credential or credit refusals. On SQLite: the `SharedRouting` role of
goipd/ledger/base.py (records and bounds in goipd/ledger/shared.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, TypeVar

from goipd.ledger.rows import storable, storable_or_none
from goipd.ledger.shared import AutoQuarantine, ProviderDisable

T = TypeVar("T")


class SqliteSharedRouting:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    # --- quarantines after line errors ---------------------------------------------------------

    async def put_auto_quarantine(self, quarantine: AutoQuarantine, now: float) -> None:
        q = quarantine
        row = (
            storable(q.server),
            storable(q.line),
            storable(q.reason),
            storable_or_none(q.code),
            q.since,
            q.until,
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM line_auto_quarantines WHERE until <= ?", (now,))
            conn.execute(
                "INSERT INTO line_auto_quarantines (server, line, reason, code, since, until)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server, line) DO UPDATE SET"
                " reason = excluded.reason, code = excluded.code, since = excluded.since,"
                " until = excluded.until WHERE excluded.until > line_auto_quarantines.until",
                row,
            )

        await self._write(op)

    async def release_auto_quarantine(self, server: str, line: str, now: float) -> bool:
        server, line = storable(server), storable(line)

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "DELETE FROM line_auto_quarantines WHERE server = ? AND line = ? RETURNING until",
                (server, line),
            ).fetchone()
            return row is not None and float(row[0]) > now

        return await self._write(op)

    async def auto_quarantines(self, now: float) -> list[AutoQuarantine]:
        return await self._read(
            lambda conn: [
                AutoQuarantine(*row)
                for row in conn.execute(
                    "SELECT server, line, reason, code, since, until FROM line_auto_quarantines"
                    " WHERE until > ? ORDER BY server, line",
                    (now,),
                )
            ]
        )

    # --- disabled cloud providers --------------------------------------------------------------

    async def disable_provider(self, disable: ProviderDisable) -> ProviderDisable:
        row = (storable(disable.provider), storable(disable.code), disable.since, disable.probe_at)

        def op(conn: sqlite3.Connection) -> ProviderDisable:
            stored = conn.execute(
                "INSERT INTO provider_disables (provider, code, since, probe_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (provider) DO UPDATE SET"
                " code = excluded.code, probe_at = excluded.probe_at"
                " RETURNING provider, code, since, probe_at",
                row,
            ).fetchone()
            return ProviderDisable(*stored)

        return await self._write(op)

    async def enable_providers(self, providers: Collection[str] | None = None) -> list[str]:
        names = None if providers is None else [storable(name) for name in providers]

        def op(conn: sqlite3.Connection) -> list[str]:
            if names is None:
                cursor = conn.execute("DELETE FROM provider_disables RETURNING provider")
            elif not names:
                return []
            else:
                marks = ", ".join("?" * len(names))
                cursor = conn.execute(
                    f"DELETE FROM provider_disables WHERE provider IN ({marks}) RETURNING provider",
                    names,
                )
            return sorted(str(row[0]) for row in cursor.fetchall())

        return await self._write(op)

    async def provider_disables(self) -> list[ProviderDisable]:
        return await self._read(
            lambda conn: [
                ProviderDisable(*row)
                for row in conn.execute(
                    "SELECT provider, code, since, probe_at FROM provider_disables"
                    " ORDER BY provider"
                )
            ]
        )
