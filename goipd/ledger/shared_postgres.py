"""Routing decisions every instance on the ledger shares: quarantines after line errors and
providers disabled after credential or credit refusals. On PostgreSQL: the `SharedRouting` role
of goipd/ledger/base.py (records and bounds in goipd/ledger/shared.py).

Every write is one statement that locks at most the one row it is about and waits for no other:
the clean-up of run-out quarantines skips rows another transaction holds (it comes again with the
next write), so two instances writing at once cannot deadlock here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.rows import storable, storable_or_none
from goipd.ledger.shared import AutoQuarantine, ProviderDisable

T = TypeVar("T")


class PostgresSharedRouting:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

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

        async def op(conn: asyncpg.Connection) -> None:
            # The line's own row is left out of the clean-up: one statement must not change a
            # row twice, and the upsert replaces a run-out quarantine anyway.
            await conn.execute(
                "WITH expired AS (DELETE FROM line_auto_quarantines WHERE (server, line) IN"
                " (SELECT server, line FROM line_auto_quarantines WHERE until <= $7"
                " AND NOT (server = $1 AND line = $2) FOR UPDATE SKIP LOCKED))"
                " INSERT INTO line_auto_quarantines (server, line, reason, code, since, until)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server, line) DO UPDATE SET"
                " reason = excluded.reason, code = excluded.code, since = excluded.since,"
                " until = excluded.until WHERE excluded.until > line_auto_quarantines.until",
                *row,
                now,
            )

        await self._write(op)

    async def release_auto_quarantine(self, server: str, line: str, now: float) -> bool:
        server, line = storable(server), storable(line)

        async def op(conn: asyncpg.Connection) -> bool:
            until = await conn.fetchval(
                "DELETE FROM line_auto_quarantines WHERE server = $1 AND line = $2 RETURNING until",
                server,
                line,
            )
            return until is not None and float(until) > now

        return await self._write(op)

    async def auto_quarantines(self, now: float) -> list[AutoQuarantine]:
        async def op(conn: asyncpg.Connection) -> list[AutoQuarantine]:
            rows = await conn.fetch(
                "SELECT server, line, reason, code, since, until FROM line_auto_quarantines"
                " WHERE until > $1 ORDER BY server, line",
                now,
            )
            return [AutoQuarantine(*row) for row in rows]

        return await self._read(op)

    # --- disabled cloud providers --------------------------------------------------------------

    async def disable_provider(self, disable: ProviderDisable) -> ProviderDisable:
        async def op(conn: asyncpg.Connection) -> ProviderDisable:
            row = await conn.fetchrow(
                "INSERT INTO provider_disables (provider, code, since, probe_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (provider) DO UPDATE SET"
                " code = excluded.code, probe_at = excluded.probe_at"
                " RETURNING provider, code, since, probe_at",
                storable(disable.provider),
                storable(disable.code),
                disable.since,
                disable.probe_at,
            )
            return ProviderDisable(*row)

        return await self._write(op)

    async def enable_providers(self, providers: Collection[str] | None = None) -> list[str]:
        names = None if providers is None else [storable(name) for name in providers]

        async def op(conn: asyncpg.Connection) -> list[str]:
            if names is None:
                rows = await conn.fetch("DELETE FROM provider_disables RETURNING provider")
            elif not names:
                return []
            else:
                rows = await conn.fetch(
                    "DELETE FROM provider_disables WHERE provider = ANY($1::text[])"
                    " RETURNING provider",
                    names,
                )
            return sorted(str(row[0]) for row in rows)

        return await self._write(op)

    async def provider_disables(self) -> list[ProviderDisable]:
        async def op(conn: asyncpg.Connection) -> list[ProviderDisable]:
            rows = await conn.fetch(
                "SELECT provider, code, since, probe_at FROM provider_disables ORDER BY provider"
            )
            return [ProviderDisable(*row) for row in rows]

        return await self._read(op)
