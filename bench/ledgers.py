"""Where a measured goipd keeps its ledger: a SQLite file, or a schema of its own on the
PostgreSQL the high-availability setup uses (loopback only, as everything in bench/)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import ledger_reader, state_counts

PG_URL = os.environ.get("GOIPD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class BenchLedger:
    db: Path
    """The SQLite file (also named for a PostgreSQL ledger: goipd's config wants a path)."""
    pg_schema: str | None = None
    """PostgreSQL: the schema at PG_URL, made by goipd and dropped by `drop`."""

    @classmethod
    def sqlite(cls, workdir: Path, name: str) -> BenchLedger:
        return cls(workdir / f"{name}.db")

    @classmethod
    def postgres(cls, workdir: Path, name: str) -> BenchLedger:
        return cls(workdir / f"{name}.db", f"bench_{uuid.uuid4().hex[:10]}")

    def configure(self, config: dict[str, Any]) -> dict[str, Any]:
        """goipd's config (from `bench.common.goipd_config`) with this ledger."""
        if self.pg_schema is not None:
            config["storage"] = {"url": PG_URL, "pg_schema": self.pg_schema}
        return config

    async def state_counts(self) -> dict[str, int]:
        """Recipients by state, read while goipd runs."""
        if self.pg_schema is None:
            return state_counts(self.db)
        conn = await asyncpg.connect(PG_URL)
        try:
            rows = await conn.fetch(
                f'SELECT state, COUNT(*) FROM "{self.pg_schema}".recipients GROUP BY state'
            )
        except asyncpg.UndefinedTableError:
            return {}  # goipd has not made its tables yet
        finally:
            await conn.close()
        return {row[0]: int(row[1]) for row in rows}

    async def drain_figures(self, text_like: str) -> tuple[int, float, float, int]:
        """(recipients, first and last submitted_at, distinct tasks) of the messages whose text
        is LIKE `text_like`: what a dispatch drain achieved, read once it is over."""
        query = (
            "SELECT COUNT(*), MIN(r.submitted_at), MAX(r.submitted_at), "
            "COUNT(DISTINCT r.server || '/' || r.task_id) FROM recipients r "
            "JOIN messages m ON m.id = r.message_id WHERE m.text LIKE {}"
        )
        if self.pg_schema is None:
            with ledger_reader(self.db) as conn:
                count, first, last, calls = conn.execute(query.format("?"), (text_like,)).fetchone()
            return int(count), float(first), float(last), int(calls)
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'SET search_path TO "{self.pg_schema}"')
            row = await conn.fetchrow(query.format("$1"), text_like)
        finally:
            await conn.close()
        assert row is not None
        return int(row[0]), float(row[1]), float(row[2]), int(row[3])

    async def drop(self) -> None:
        if self.pg_schema is None:
            return
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.pg_schema}" CASCADE')
        finally:
            await conn.close()


async def pg_settings() -> str:
    """What the PostgreSQL figures depend on, for a scenario's parameters."""
    conn = await asyncpg.connect(PG_URL)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    return (
        f"PostgreSQL {version.split()[0]} on loopback, fsync={fsync}, "
        f"synchronous_commit={commit} (its server processes are not pinned)"
    )
