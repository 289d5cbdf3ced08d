"""Inbound SMS end to end: pushed by the simulated SMS Server, stored, and forwarded at least
once to a webhook that is down at first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from goipd.app import Daemon
from goipd.runtime.netutil import bound_port
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.pipeline import connect_push


async def test_inbound_sms_is_forwarded_at_least_once_with_retries(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    calls = 0

    async def webhook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503)  # the receiver is briefly down
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/inbound", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
        url = f"http://127.0.0.1:{bound_port(site)}/inbound"
        daemon = await daemon_factory(
            daemon_config(sim, ["hq"], tmp_path, inbound={"forward_urls": [url]})
        )
        await connect_push(http, sim, daemon, ["hq"])
        # Retries start at 5 s; the test moves the clock instead of waiting.
        clock = [0.0]
        daemon.forwarder.clock = lambda: time.time() + clock[0]
        await control(
            http,
            sim,
            "POST",
            "servers/hq/inbound",
            {"goip_line": "G101", "from_number": "10086", "content": "hi there"},
        )
        await eventually(lambda: asyncio.sleep(0, calls >= 1), 5, "first forward attempt")
        clock[0] = 10.0
        daemon.forwarder.wake()
        await eventually(lambda: asyncio.sleep(0, bool(received)), 5, "forwarded after retry")
        assert received[0]["from"] == "10086"
        assert received[0]["text"] == "hi there"
        assert received[0]["source"] == "hq"
        assert received[0]["line"] == "G101"
        assert isinstance(received[0]["id"], int)
        await asyncio.sleep(1.2)
        assert len(received) == 1
    finally:
        await runner.cleanup()
