"""Small per-provider documents that outlive the process: c123's reply recovery plan
(goipd/clouds/reply_recovery.py). On SQLite: the `ProviderDocuments` role of
goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from goipd.ledger.rows import storable

T = TypeVar("T")
MAX_DOCUMENT_CHARS = 16_384
"""The longest body a document may have. c123's reply plan stays under 2,000 characters (at most
reply_recovery.MAX_HOURS hours); the cap keeps a bug from writing megabytes at every poll."""


def checked_body(body: str) -> str:
    """`body` as stored; ValueError when it is longer than MAX_DOCUMENT_CHARS."""
    if len(body) > MAX_DOCUMENT_CHARS:
        raise ValueError(
            f"provider document of {len(body)} characters (at most {MAX_DOCUMENT_CHARS})"
        )
    return storable(body)


class SqliteProviderDocuments:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def provider_document(self, provider: str, name: str) -> tuple[str, int] | None:
        key = (storable(provider), storable(name))

        def op(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute(
                "SELECT body, version FROM provider_state WHERE provider = ? AND name = ?", key
            ).fetchone()
            return None if row is None else (str(row[0]), int(row[1]))

        return await self._read(op)

    async def put_provider_document(
        self, provider: str, name: str, body: str, version: int, now: float
    ) -> int | None:
        values = (checked_body(body), now, storable(provider), storable(name))

        def op(conn: sqlite3.Connection) -> int | None:
            if version == 0:
                row = conn.execute(
                    "INSERT INTO provider_state (body, updated_at, provider, name, version)"
                    " VALUES (?, ?, ?, ?, 1) ON CONFLICT (provider, name) DO NOTHING"
                    " RETURNING version",
                    values,
                ).fetchone()
            else:
                row = conn.execute(
                    "UPDATE provider_state SET body = ?, updated_at = ?, version = version + 1"
                    " WHERE provider = ? AND name = ? AND version = ? RETURNING version",
                    (*values, version),
                ).fetchone()
            return None if row is None else int(row[0])

        return await self._write(op)
