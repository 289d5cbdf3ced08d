"""Small per-provider documents that outlive the process: c123's reply recovery plan
(goipd/clouds/reply_recovery.py). On PostgreSQL: the `ProviderDocuments` role of
goipd/ledger/base.py.

Two instances writing one document from the same version: the second one's UPDATE waits for the
first one's row lock, then finds the version changed and writes nothing (READ COMMITTED reads
the row again). One row per statement, so no lock order to keep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.documents_sqlite import checked_body
from goipd.ledger.rows import storable

T = TypeVar("T")


class PostgresProviderDocuments:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def provider_document(self, provider: str, name: str) -> tuple[str, int] | None:
        key = (storable(provider), storable(name))

        async def op(conn: asyncpg.Connection) -> tuple[str, int] | None:
            row = await conn.fetchrow(
                "SELECT body, version FROM provider_state WHERE provider = $1 AND name = $2", *key
            )
            return None if row is None else (str(row[0]), int(row[1]))

        return await self._read(op)

    async def put_provider_document(
        self, provider: str, name: str, body: str, version: int, now: float
    ) -> int | None:
        values = (checked_body(body), now, storable(provider), storable(name))

        async def op(conn: asyncpg.Connection) -> int | None:
            if version == 0:
                found = await conn.fetchval(
                    "INSERT INTO provider_state (body, updated_at, provider, name, version)"
                    " VALUES ($1, $2, $3, $4, 1) ON CONFLICT (provider, name) DO NOTHING"
                    " RETURNING version",
                    *values,
                )
            else:
                found = await conn.fetchval(
                    "UPDATE provider_state SET body = $1, updated_at = $2, version = version + 1"
                    " WHERE provider = $3 AND name = $4 AND version = $5 RETURNING version",
                    *values,
                    version,
                )
            return None if found is None else int(found)

        return await self._write(op)
