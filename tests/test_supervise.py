"""Background loops survive their own failures: the forwarder keeps forwarding through a ledger
that refuses writes (a real SQLite writer switched to query-only), and `supervised` restarts a
loop that crashed, counting it, but not while the daemon stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from goipd.config import InboundSettings
from goipd.inbound.forwarder import InboundForwarder
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.runtime.supervise import supervised
from tests.cloud_helpers import serve_routes
from tests.conftest import eventually, set_read_only


async def test_forwarding_goes_on_after_the_ledger_refused_writes(ledger: SqliteLedger) -> None:
    received: list[dict[str, Any]] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    async with serve_routes(web.post("/inbound", receiver)) as base:
        url = f"{base}/inbound"
        first = await ledger.add_inbound("hq", "G101", "+886911", None, "one", "t", 1.0, (url,))
        await set_read_only(ledger, True)
        forwarder = InboundForwarder(ledger, lambda: InboundSettings(forward_urls=(url,)))
        task = asyncio.create_task(forwarder.run())
        try:
            # Posted, but the result cannot be written: the row stays due.
            await eventually(lambda: asyncio.sleep(0, bool(received)), 5, "first forward")
            await asyncio.sleep(1.5)
            assert not task.done()
            # Not posted again and again while the ledger refuses (one try per second at most).
            assert len(received) <= 3
            assert len(await ledger.outbox_due(1e12, 10)) == 1
            await set_read_only(ledger, False)
            await eventually(
                lambda: asyncio.sleep(0, len(received) >= 2), 5, "forwarded again after recovery"
            )

            async def recorded() -> bool:
                return not await ledger.outbox_due(1e12, 10)

            await eventually(recorded, 5, "forward recorded after recovery")
            second = await ledger.add_inbound(
                "hq", "G101", "+886922", None, "two", "t", 2.0, (url,)
            )
            forwarder.wake()
            await eventually(
                lambda: asyncio.sleep(0, received[-1]["id"] == second), 5, "a new SMS forwarded"
            )
            assert {r["id"] for r in received} == {first, second}
        finally:
            await forwarder.stop()
            await task


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
