"""Ledger test data and switches: the PostgreSQL test server, a fixed clock, a new message, and a
SQLite writer that refuses writes."""

from __future__ import annotations

import asyncio
import os

from goipd.ledger.sqlite import SqliteLedger
from goipd.model import NewMessage

PG_URL = os.environ.get("GOIPD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

NOW = 1_800_000_000.0


def new(
    numbers: tuple[str, ...] = ("+886912345678",),
    key: str | None = None,
    text: str = "hello",
    send_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        idempotency_key=key,
        send_at=send_at,
    )


async def set_read_only(store: SqliteLedger, on: bool) -> None:
    """Make the writer connection itself refuse writes: the sqlite3.OperationalError
    ("readonly") path of a read-only or immutable file, without needing privileges."""
    writer, pool = store._writer, store._writer_pool
    assert writer is not None and pool is not None
    pragma = f"PRAGMA query_only={'ON' if on else 'OFF'}"
    await asyncio.get_running_loop().run_in_executor(pool, writer.execute, pragma)
