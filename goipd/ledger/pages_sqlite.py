"""Alertmanager notifications already paged, so a restart or another instance does not page again
(goipd/accept/alerts.py). On SQLite: the `AlertPages` role of goipd/ledger/base.py.

One SQLite file has one writer: the claim's upsert and whatever reads it back run in one
transaction of the group committer, so nothing comes between them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from goipd.ledger.rows import storable

T = TypeVar("T")
MAX_PAGES: Final = 10_000
"""Pages remembered at most, whatever the window and the traffic: the newest are kept."""
UNRECORDED_PAGE_KEEP: Final = 60.0
"""Seconds a claimed page whose message id was never recorded holds back the same notification.
Its process may have died before the SMS was stored: past this (twice the PostgreSQL write
timeout, longer than any accept takes) a repeat pages again, rather than nobody being paged."""

CLAIM = (
    "INSERT INTO alert_pages AS p (receiver, group_key, status, paged_at, message_id)"
    " VALUES ({0}, {1}, {2}, {3}, '') ON CONFLICT (receiver, group_key, status) DO UPDATE"
    " SET paged_at = excluded.paged_at, message_id = ''"
    " WHERE p.paged_at <= excluded.paged_at - {4} OR p.paged_at >= excluded.paged_at + {4}"
    " OR (p.message_id = '' AND p.paged_at <= excluded.paged_at - {5})"
    " RETURNING 1"
)
"""Claimed unless the key was paged within the window (an unrecorded claim counts for
UNRECORDED_PAGE_KEEP at most); placeholders: receiver, group_key, status, now, window, keep."""
FORGET = (
    "paged_at <= {0} OR paged_at <= (SELECT paged_at FROM alert_pages"
    " ORDER BY paged_at DESC LIMIT 1 OFFSET {1})"
)
"""Pages to forget: older than the window ({0}: now - window), or beyond the newest {1}."""
KEY = "receiver = {0} AND group_key = {1} AND status = {2} AND paged_at = {3}"


class SqliteAlertPages:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def claim_alert_page(
        self, receiver: str, group_key: str, status: str, now: float, window: float
    ) -> str | None:
        key = (storable(receiver), storable(group_key), storable(status))

        def op(conn: sqlite3.Connection) -> str | None:
            claimed = conn.execute(
                CLAIM.format(*(f"?{n}" for n in range(1, 7))),
                (*key, now, window, UNRECORDED_PAGE_KEEP),
            ).fetchone()
            found = None
            if claimed is None:
                found = conn.execute(
                    "SELECT message_id FROM alert_pages WHERE receiver = ? AND group_key = ?"
                    " AND status = ?",
                    key,
                ).fetchone()
            conn.execute(
                "DELETE FROM alert_pages WHERE " + FORGET.format("?", "?"),
                (now - window, MAX_PAGES),
            )
            if claimed is not None:
                return None
            return "" if found is None else str(found[0])

        return await self._write(op)

    async def record_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float, message_id: str
    ) -> None:
        key = (storable(receiver), storable(group_key), storable(status), paged_at)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE alert_pages SET message_id = ? WHERE " + KEY.format("?", "?", "?", "?"),
                (storable(message_id), *key),
            )

        await self._write(op)

    async def release_alert_page(
        self, receiver: str, group_key: str, status: str, paged_at: float
    ) -> None:
        key = (storable(receiver), storable(group_key), storable(status), paged_at)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM alert_pages WHERE "
                + KEY.format("?", "?", "?", "?")
                + " AND message_id = ''",
                key,
            )

        await self._write(op)
