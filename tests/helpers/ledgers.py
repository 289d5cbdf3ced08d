"""Ledger test data and switches: the PostgreSQL test server, either backend opened for a test,
a fixed clock, a new message, and a SQLite writer that refuses writes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import NORMAL_PRIORITY, NewMessage

PG_URL = os.environ.get("GOIPD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

NOW = 1_800_000_000.0


def new(
    numbers: tuple[str, ...] = ("+886912345678",),
    key: str | None = None,
    text: str = "hello",
    send_at: float | None = None,
    *,
    priority: int = NORMAL_PRIORITY,
    expires_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        idempotency_key=key,
        send_at=send_at,
        priority=priority,
        expires_at=expires_at,
    )


async def set_read_only(store: SqliteLedger, on: bool) -> None:
    """Make the writer connection itself refuse writes: the sqlite3.OperationalError
    ("readonly") path of a read-only or immutable file, without needing privileges."""
    writer, pool = store._writer, store._writer_pool
    assert writer is not None and pool is not None
    pragma = f"PRAGMA query_only={'ON' if on else 'OFF'}"
    await asyncio.get_running_loop().run_in_executor(pool, writer.execute, pragma)


BACKENDS = ("sqlite", "postgresql")


@asynccontextmanager
async def open_backend(
    kind: str, directory: Path, schema: str | None = None
) -> AsyncIterator[SqliteLedger | PostgresLedger]:
    """An open ledger of `kind` (one of BACKENDS): a SQLite file in `directory`, or a schema of
    the test PostgreSQL (`schema`, or a fresh one dropped after). Two opened with the same
    directory or schema are two instances on one ledger."""
    if kind == "sqlite":
        store: SqliteLedger | PostgresLedger = SqliteLedger(directory / "goipd.db")
    else:
        own = schema is None
        store = PostgresLedger(PG_URL, schema=schema or f"test_{uuid.uuid4().hex[:12]}")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if kind != "sqlite" and own:
            assert isinstance(store, PostgresLedger)
            await store.drop_schema()
