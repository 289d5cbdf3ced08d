"""Group commit: whatever writes callers queue while a transaction is being written go into the
next transaction together, so N concurrent callers cost one commit (one fsync), not N. With
several runners, as many batches are in flight at once (each runner its own connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog

from goipd.model import LedgerError

log = structlog.get_logger("goipd.ledger")
Op = TypeVar("Op")


Runner = Callable[[list[Any]], Awaitable[list[Any]]]


class GroupCommitter(Generic[Op]):
    """Runs queued ops in batches through a runner, which executes them in one transaction and
    returns one result (or exception, for that caller alone) per op.

    One runner: batches one after another, in queue order. Several: each takes the next batch
    as soon as it is free, so a batch is written while another waits for its commit; only ops
    that are safe in concurrent transactions (as with another instance's) may be queued."""

    def __init__(
        self,
        runners: Sequence[Runner],
        errors: tuple[type[BaseException], ...],
        describe: Callable[[BaseException], str],
    ) -> None:
        if not runners:
            raise ValueError("a group committer needs a runner")
        self._runners = tuple(runners)
        self._errors = errors
        self._describe = describe
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.commits = 0
        self.last_error: str | None = None
        """Why the last batch failed as a whole (the store, not one caller's data); None
        since a batch committed. Readiness follows it (see Ledger.write_error)."""

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._loop(run), name="ledger-commit") for run in self._runners
        ]

    async def submit(self, op: Op) -> Any:
        if self._queue is None:
            raise LedgerError("ledger is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))  # unbounded: a coroutine call would buy nothing
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        if self._tasks and self._queue is not None:
            await self._queue.join()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = None

    async def _loop(self, run_batch: Runner) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            results = await self._run(run_batch, [op for op, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                self._queue.task_done()

    async def _run(self, run_batch: Runner, ops: list[Op]) -> list[Any]:
        try:
            results = await run_batch(ops)
        except LedgerError as exc:
            # The backend already knows why (e.g. no connection to the database yet).
            return self._failed(exc, len(ops))
        except self._errors as exc:
            # The whole transaction is gone; every caller hears why, and the next batch
            # starts afresh (a disk that was full may have room again).
            return self._failed(LedgerError(self._describe(exc)), len(ops))
        except Exception:
            # A bug in one caller's work must not end this loop: every later write would
            # wait forever. The batch fails; the loop goes on.
            log.exception("ledger_commit_crashed", writes=len(ops))
            return [LedgerError("internal error in the ledger")] * len(ops)
        self.commits += 1
        if self.last_error is not None:
            log.info("ledger_write_recovered", after=self.last_error)
            self.last_error = None
        return results

    def _failed(self, error: LedgerError, writes: int) -> list[Any]:
        self.last_error = str(error)
        log.error("ledger_write_failed", reason=self.last_error, writes=writes)
        return [error] * writes
