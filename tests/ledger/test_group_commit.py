"""Group commit: concurrent callers are written in fewer transactions than there are callers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from goipd.ledger.sqlite import SqliteLedger
from tests.helpers.ledgers import NOW, new


async def test_sqlite_group_commit_uses_fewer_transactions_than_callers(tmp_path: Path) -> None:
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    try:
        before = store.commits
        await asyncio.gather(
            *(store.accept(new((f"+8869123{i:05d}",)), NOW) for i in range(200)),
            *(store.add_inbound("hq", "G1", "10086", None, "x", "", NOW) for _ in range(50)),
        )
        assert 1 <= store.commits - before <= 10
    finally:
        await store.close()
