"""An SMS Server engine that dies while messages flow on two servers, goipd as its own process:
the server keeps ACCEPTing and its lines keep saying LOGIN, yet it sends nothing. goipd finds the
stall, routes around it, and, once the engine is back, uses the server again; every recipient
ends final, each sent once (on_stall: wait) or every second send counted (on_stall: move).
Detection settings are scaled down (stall_after 3 s instead of 120 s) to keep the test short."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.processes import final_states, free_port, process_config, start_process

Simulator = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
STALL_AFTER = 3.0
INTERVAL = 1.0
DETECTION = STALL_AFTER + 3 * INTERVAL + 2.0
"""A stuck send is asked about once reconcile.query_after has passed, the stall decided at the
sweep after stall_after; plus a margin for a loaded machine."""
SERVERS = ("hq", "branch")


def config(sim: RunningSimulator, port: int, tmp_path: Path, on_stall: str) -> dict[str, Any]:
    base = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        reconcile={"interval": f"{INTERVAL:g}s", "query_after": "1s", "report_deadline": "5m"},
        routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
    )
    (hq,) = base["servers"]
    hq.update(
        {
            "poll_interval": "500ms",
            "timeout": "400ms",
            "send_timeout": "5s",
            "stall_after": f"{STALL_AFTER:g}s",
            "on_stall": on_stall,
            "inbox_interval": "0s",
        }
    )
    branch = {**hq, "name": "branch", "url": sim.base_url("branch"), "password": "pw-branch"}
    branch["hook_token"] = "hook-branch-0123456789"
    base["servers"] = [hq, branch]
    return base


async def send(session: aiohttp.ClientSession, port: int, numbers: list[str]) -> None:
    for number in numbers:
        body = {"to": [number], "text": f"to {number}"}
        url = f"http://127.0.0.1:{port}/api/v1/messages"
        async with session.post(url, json=body) as resp:
            assert resp.status == 202, await resp.text()


async def sent_numbers(session: aiohttp.ClientSession, sim: RunningSimulator) -> Counter[str]:
    counts: Counter[str] = Counter()
    for server in SERVERS:
        sent = await control(session, sim, "GET", f"servers/{server}/sent")
        counts.update(row["number"].lstrip("+") for row in sent)
    return counts


async def tasks_of(session: aiohttp.ClientSession, sim: RunningSimulator, server: str) -> int:
    return len(await control(session, sim, "GET", f"servers/{server}/tasks"))


async def hq_state(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/api/v1/lines?server=hq") as resp:
        (server,) = (await resp.json())["servers"]
        return server  # type: ignore[no-any-return]


async def metric(session: aiohttp.ClientSession, port: int, name: str, **labels: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return sample(await resp.text(), name, **labels) or 0.0


@pytest.mark.parametrize("on_stall", ["wait", "move"])
async def test_a_dead_engine_is_found_routed_around_and_used_again_once_back(
    simulator: Simulator, tmp_path: Path, on_stall: str
) -> None:
    port = free_port()
    lines = {name: [{"line_id": f"{name}-1"}, {"line_id": f"{name}-2"}] for name in SERVERS}
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", **lines))
    daemon = start_process(config(sim, port, tmp_path, on_stall), port, tmp_path)
    numbers = [f"+88691200{n:04d}" for n in range(60)]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as session:
        try:
            daemon.start()
            await daemon.ready(session)
            await send(session, port, numbers[:10])
            await final_states(session, port, numbers[:10])
            # The engine dies; sendsms still ACCEPTs after its usual wait for the engine.
            await control(
                session, sim, "PATCH", "servers/hq", {"engine": "dead", "engine_delay": 0.2}
            )
            died = time.monotonic()
            flow = asyncio.create_task(send(session, port, numbers[10:30]))

            async def stalled() -> bool:
                return bool((await hq_state(session, port))["stalled"])

            await eventually(stalled, within=DETECTION, what="hq found stalled")
            assert time.monotonic() - died < DETECTION
            await flow
            assert await metric(session, port, "goipd_server_stalled", server="hq") == 1
            # Everything sent from now on goes to branch.
            held_tasks = await tasks_of(session, sim, "hq")
            await send(session, port, numbers[30:45])

            async def later_ones_sent() -> bool:
                sent = await sent_numbers(session, sim)
                return all(sent[n.lstrip("+")] for n in numbers[30:45])

            await eventually(later_ones_sent, within=15, what="the later messages sent by branch")
            assert await tasks_of(session, sim, "hq") == held_tasks
            # The engine comes back: what hq still holds goes out, and hq is used again.
            await control(session, sim, "PATCH", "servers/hq", {"engine": "running"})

            async def resumed() -> bool:
                return not (await hq_state(session, port))["stalled"]

            await eventually(resumed, within=DETECTION, what="hq used again")

            async def lines_back() -> bool:
                url = f"http://127.0.0.1:{port}/api/v1/lines?server=hq"
                async with session.get(url) as resp:
                    found = (await resp.json())["lines"]
                return all(line["state"] == "registered" for line in found)

            # A restarted engine shows the lines offline until their next keepalive.
            await eventually(lines_back, within=10, what="hq's lines registered again")
            await send(session, port, numbers[45:])
            await final_states(session, port, numbers)
            assert await tasks_of(session, sim, "hq") > held_tasks
            # Each number sent once, or its second send counted.
            await asyncio.sleep(1.0)  # the returning engine's last reports
            sent = await sent_numbers(session, sim)
            assert set(sent) == {n.lstrip("+") for n in numbers}
            twice = sum(count - 1 for count in sent.values())
            late = await metric(session, port, "goipd_late_sends_total", server="hq", after="moved")
            assert twice == late
            if on_stall == "wait":
                assert twice == 0
            else:
                # Every send moved off hq went out twice once its engine returned: counted as
                # ambiguous when moved, and as late sends when hq sent them after all.
                assert twice > 0
                assert await metric(session, port, "goipd_dispatch_ambiguous_total") == twice
            assert await metric(session, port, "goipd_server_stalled", server="hq") == 0
        finally:
            daemon.ensure_dead()
