"""Talking to the GoIP simulator directly: its control API, and waiting on its state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from goipd.sim.goip import RunningSimulator


async def control(
    sim: RunningSimulator, method: str, path: str, body: Any = None, expect: int = 200
) -> Any:
    """One call of the simulator's control API, expecting status `expect`."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{sim.url}/_control/{path}", json=body) as resp,
    ):
        assert resp.status == expect, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
