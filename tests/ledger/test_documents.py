"""The `ProviderDocuments` role on both backends: a document reads back as written, a write from a
version that is no longer the document's changes nothing (of two instances writing from one
version exactly one wins), bodies are capped, and a restart or another instance on the same
PostgreSQL ledger reads what was written."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from goipd.ledger.documents_sqlite import MAX_DOCUMENT_CHARS
from tests.helpers.ledgers import BACKENDS, NOW, PG_URL, open_backend

pytestmark = pytest.mark.parametrize("kind", BACKENDS)


async def test_a_document_is_written_from_its_version_and_reads_back(
    kind: str, tmp_path: Path
) -> None:
    async with open_backend(kind, tmp_path) as store:
        assert await store.provider_document("c123", "replies") is None
        assert await store.put_provider_document("c123", "replies", '{"a": 1}', 0, NOW) == 1
        assert await store.provider_document("c123", "replies") == ('{"a": 1}', 1)
        assert await store.put_provider_document("c123", "replies", '{"a": 2}', 1, NOW + 1) == 2
        assert await store.provider_document("c123", "replies") == ('{"a": 2}', 2)
        # Providers and names are separate documents.
        assert await store.provider_document("c123", "other") is None
        assert await store.provider_document("smsgo", "replies") is None
        assert await store.put_provider_document("smsgo", "replies", "收到\x00", 0, NOW) == 1
        assert await store.provider_document("smsgo", "replies") == ("收到\ufffd", 1)


async def test_a_write_from_a_stale_version_changes_nothing(kind: str, tmp_path: Path) -> None:
    async with open_backend(kind, tmp_path) as store:
        assert await store.put_provider_document("c123", "replies", "first", 0, NOW) == 1
        # Another writer read version 1 and wrote meanwhile.
        assert await store.put_provider_document("c123", "replies", "theirs", 1, NOW) == 2
        assert await store.put_provider_document("c123", "replies", "mine", 1, NOW) is None
        assert await store.put_provider_document("c123", "replies", "new", 0, NOW) is None
        assert await store.put_provider_document("c123", "gone", "x", 3, NOW) is None
        assert await store.provider_document("c123", "replies") == ("theirs", 2)
        assert await store.provider_document("c123", "gone") is None


async def test_bodies_are_capped(kind: str, tmp_path: Path) -> None:
    async with open_backend(kind, tmp_path) as store:
        longest = "x" * MAX_DOCUMENT_CHARS
        assert await store.put_provider_document("c123", "replies", longest, 0, NOW) == 1
        with pytest.raises(ValueError, match="at most"):
            await store.put_provider_document("c123", "replies", longest + "x", 1, NOW)
        assert await store.provider_document("c123", "replies") == (longest, 1)


@pytest.fixture
async def schema(kind: str) -> AsyncIterator[str | None]:
    """A PostgreSQL schema several ledgers open in turn or together (dropped after); None on
    SQLite, where every ledger opened in tmp_path is the same file."""
    if kind == "sqlite":
        yield None
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def test_a_restarted_ledger_reads_what_was_written(
    kind: str, schema: str | None, tmp_path: Path
) -> None:
    async with open_backend(kind, tmp_path, schema=schema) as first:
        assert await first.put_provider_document("c123", "replies", "plan", 0, NOW) == 1
    async with open_backend(kind, tmp_path, schema=schema) as restarted:
        assert await restarted.provider_document("c123", "replies") == ("plan", 1)
        assert await restarted.put_provider_document("c123", "replies", "next", 1, NOW) == 2


async def test_of_two_writers_from_one_version_exactly_one_wins(
    kind: str, schema: str | None, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(open_backend(kind, tmp_path, schema=schema))
        # On PostgreSQL a second instance on the same ledger; a SQLite file has one instance,
        # so there two of its own tasks race.
        two = (
            await stack.enter_async_context(open_backend(kind, tmp_path, schema=schema))
            if kind == "postgresql"
            else one
        )
        for round_ in range(5):
            version = round_  # each round starts from the last winner's version
            results = await asyncio.gather(
                one.put_provider_document("c123", "replies", f"one {round_}", version, NOW),
                two.put_provider_document("c123", "replies", f"two {round_}", version, NOW),
            )
            winners = [r for r in results if r is not None]
            assert winners == [version + 1], results
            body = f"{'one' if results[0] is not None else 'two'} {round_}"
            assert await two.provider_document("c123", "replies") == (body, version + 1)
            assert await one.provider_document("c123", "replies") == (body, version + 1)
