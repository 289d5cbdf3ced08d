"""The send pipeline through the API: pushes wired from the simulated SMS Servers to goipd's
hooks, sending a message, and waiting for its recipients' states."""

from __future__ import annotations

from typing import Any

import aiohttp

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually
from tests.helpers.daemons import control


async def connect_push(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    daemon: Daemon,
    servers: list[str],
    drop: bool = False,
) -> None:
    base = f"http://127.0.0.1:{daemon.port}"
    for name in servers:
        token = f"hook-{name}-0123456789"
        await control(
            http,
            sim,
            "PUT",
            f"servers/{name}/push",
            {
                "status_url": f"{base}/hooks/goip/{name}/status?token={token}",
                "inbound_url": f"{base}/hooks/goip/{name}/inbound?token={token}",
                "drop_reports": drop,
            },
        )


async def send(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], status: int = 202
) -> dict[str, Any]:
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        reply = await resp.json(content_type=None)
        assert resp.status == status, reply
        return reply  # type: ignore[no-any-return]


async def message(http: aiohttp.ClientSession, base: str, message_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def wait_states(
    http: aiohttp.ClientSession, base: str, message_id: str, states: set[str], within: float = 8.0
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def final() -> bool:
        found.update(await message(http, base, message_id))
        return all(r["state"] in states for r in found["recipients"])

    await eventually(final, within, f"message {message_id} in {states}")
    return found


async def sent_log(
    http: aiohttp.ClientSession, sim: RunningSimulator, server: str
) -> list[dict[str, Any]]:
    return await control(http, sim, "GET", f"servers/{server}/sent")  # type: ignore[no-any-return]
