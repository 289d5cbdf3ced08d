"""Group commit: concurrent callers are written in fewer transactions than there are callers;
with several runners, a batch is written while another waits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from goipd.ledger.group_commit import GroupCommitter
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


async def test_with_two_runners_a_batch_is_written_while_another_waits() -> None:
    started: list[str] = []
    release = asyncio.Event()

    async def slow(ops: list[Any]) -> list[Any]:
        started.append("slow")
        await release.wait()  # a batch waiting for a lock or a commit
        return list(ops)

    async def quick(ops: list[Any]) -> list[Any]:
        started.append("quick")
        return list(ops)

    committer: GroupCommitter[str] = GroupCommitter([slow, quick], (OSError,), str)
    committer.start()
    try:
        first = asyncio.create_task(committer.submit("first"))
        while not started:  # the first runner has taken it
            await asyncio.sleep(0)
        assert await asyncio.wait_for(committer.submit("second"), 5) == "second"
        assert not first.done()
        release.set()
        assert await asyncio.wait_for(first, 5) == "first"
        assert started == ["slow", "quick"]
    finally:
        await committer.close()


async def test_with_one_runner_batches_are_written_one_after_another() -> None:
    release = asyncio.Event()
    batches: list[list[str]] = []

    async def run(ops: list[str]) -> list[str]:
        batches.append(ops)
        await release.wait()
        return ops

    committer: GroupCommitter[str] = GroupCommitter([run], (OSError,), str)
    committer.start()
    try:
        first = asyncio.create_task(committer.submit("first"))
        while not batches:  # the runner has taken it
            await asyncio.sleep(0)
        second = asyncio.create_task(committer.submit("second"))
        third = asyncio.create_task(committer.submit("third"))
        await asyncio.sleep(0.05)
        assert batches == [["first"]] and not second.done()
        release.set()
        done = await asyncio.wait_for(asyncio.gather(first, second, third), 5)
        assert list(done) == ["first", "second", "third"]
        assert batches == [["first"], ["second", "third"]]
    finally:
        await committer.close()
