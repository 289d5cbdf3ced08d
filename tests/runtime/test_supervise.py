"""Background loops survive their own failures: `supervised` restarts a loop that crashed,
counting it, but not while the daemon stops."""

from __future__ import annotations

import asyncio

import pytest

from goipd.metrics.catalog import Metrics
from goipd.runtime.supervise import supervised


def restarts(metrics: Metrics, task: str) -> float:
    return metrics.registry.get_sample_value("goipd_task_restarts_total", {"task": task}) or 0.0


async def test_supervised_restarts_a_crashed_loop_and_counts_it() -> None:
    metrics = Metrics()
    runs: list[int] = []
    done = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("a bug")
        done.set()

    task = asyncio.create_task(
        supervised("demo", loop, metrics.task_restarts, lambda: False, backoff=0.01)
    )
    await asyncio.wait_for(done.wait(), 5)
    await task  # a loop that returns ends supervision
    assert runs == [0, 1, 2] and restarts(metrics, "demo") == 2


async def test_supervised_exports_its_restart_series_before_any_crash() -> None:
    # Without a 0 sample, increase() cannot see the first crash and GoipdTaskCrashing misses it.
    metrics = Metrics()

    async def quiet() -> None:
        return None

    await supervised("calm", quiet, metrics.task_restarts, lambda: False)
    sample = metrics.registry.get_sample_value("goipd_task_restarts_total", {"task": "calm"})
    assert sample == 0.0


async def test_supervised_does_not_restart_during_shutdown() -> None:
    metrics = Metrics()
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("closed under it")

    await asyncio.wait_for(supervised("demo", loop, metrics.task_restarts, lambda: True), 5)
    assert runs == 1 and restarts(metrics, "demo") == 0


async def test_supervised_stops_when_cancelled() -> None:
    metrics = Metrics()
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervised("demo", loop, metrics.task_restarts, lambda: False))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts(metrics, "demo") == 0
