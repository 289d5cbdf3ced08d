"""Alertmanager notifications already paged, so a restart or another instance does not page again
(goipd/accept/alerts.py). On PostgreSQL: the `AlertPages` role of goipd/ledger/base.py.

A claim is one atomic upsert (`INSERT ... ON CONFLICT DO UPDATE ... WHERE` the page on record is
outside the window): of two instances claiming the same notification at once, the second waits
for the first's row and then finds it paged. Like leases (ha_postgres.py), pages are written on
a pool connection, each statement its own short transaction: a claim never holds its row lock
while a large group commit is written, nor waits behind one. Forgetting old pages skips rows
another instance has locked (`SKIP LOCKED`), so it never waits and cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.pages_sqlite import CLAIM, FORGET, KEY, MAX_PAGES, UNRECORDED_PAGE_KEEP
from goipd.ledger.rows import storable

T = TypeVar("T")
_PG_CLAIM = CLAIM.format("$1", "$2", "$3", "$4::float8", "$5::float8", "$6::float8")
_PG_FORGET = (
    "DELETE FROM alert_pages WHERE (receiver, group_key, status) IN (SELECT receiver, group_key,"
    " status FROM alert_pages WHERE "
    + FORGET.format("$1::float8", "$2::int")
    + " FOR UPDATE SKIP LOCKED)"
)
_PG_KEY = KEY.format("$1", "$2", "$3", "$4::float8")


class PostgresAlertPages:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def claim_alert_page(
        self, receiver: str, group_key: str, status: str, now: float, window: float
    ) -> str | None:
        key = (storable(receiver), storable(group_key), storable(status))

        async def op(conn: asyncpg.Connection) -> str | None:
            claimed = await conn.fetchval(_PG_CLAIM, *key, now, window, UNRECORDED_PAGE_KEEP)
            found = None
            if claimed is None:
                # A statement of its own: it sees the row the upsert waited for, which the
                # upsert's own snapshot (and so a CTE beside it) may not.
                found = await conn.fetchval(
                    "SELECT message_id FROM alert_pages WHERE receiver = $1 AND group_key = $2"
                    " AND status = $3",
                    *key,
                )
            await conn.execute(_PG_FORGET, now - window, MAX_PAGES)
            if claimed is not None:
                return None
            return "" if found is None else str(found)

        return await self._read(op)  # a pool connection, see the module docstring

    async def record_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float, message_id: str
    ) -> None:
        key = (storable(receiver), storable(group_key), storable(status), paged_at)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE alert_pages SET message_id = $5 WHERE " + _PG_KEY,
                *key,
                storable(message_id),
            )

        await self._read(op)

    async def release_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float
    ) -> None:
        key = (storable(receiver), storable(group_key), storable(status), paged_at)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM alert_pages WHERE " + _PG_KEY + " AND message_id = ''", *key
            )

        await self._read(op)
