"""Two goipd processes share one PostgreSQL schema behind a load balancer. 2,000 messages go in
through both APIs, the simulated SMS Server pushes its reports through the load balancer (so
either instance applies them), and the instance that polls the server is SIGKILLed mid-run.
Afterwards every recipient is final, none was sent twice (the simulator's own send log), only
one instance polled at a time, and the survivor took polling over within two poll intervals
(its goipd_instance_leader, and the simulator's querylines arrival times)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import sample
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.processes import Goipd, final_states, free_port, process_config, start_process

# In one xdist group with test_crash_recovery.py / test_ha_failover.py: the two busiest tests
# (a thousand and more messages through goipd processes SIGKILLed mid-run) run one after the
# other on one worker instead of side by side, which keeps their timing bounds (a survivor
# taking polling over within two poll intervals) about goipd rather than a starved machine.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sigkill")]

MESSAGES = 2000
POLL = 1.0
KILL_AFTER = 700
"""Accepted messages before the kill: sends, reports and polls are all in full flow."""


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_ha_{uuid.uuid4().hex[:10]}"
    yield schema
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def start_balancer(backends: list[int]) -> tuple[web.AppRunner, int]:
    """Round robin over the instances, skipping one that refuses connections: what an HTTP
    load balancer with passive health checks does for the SMS Server's pushes."""
    turn = itertools.count()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        start = next(turn)
        for attempt in range(len(backends)):
            port = backends[(start + attempt) % len(backends)]
            url = f"http://127.0.0.1:{port}{request.path_qs}"
            try:
                async with session.request(request.method, url, data=body) as resp:
                    return web.Response(
                        status=resp.status, body=await resp.read(), content_type=resp.content_type
                    )
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=502, text="no instance answered")

    async def close_session(_app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close_session)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def instance_config(sim: RunningSimulator, port: int, name: str, schema: str, path: Path) -> Goipd:
    config = process_config(
        sim,
        port,
        {"url": PG_URL, "pg_schema": schema},
        ha={"instance_id": name},
        routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
        reconcile={"interval": "1s", "query_after": "1s"},
        polling={"jitter": 0.0},
    )
    config["servers"][0].update(poll_interval=f"{POLL:g}s", timeout="900ms")
    return start_process(config, port, path, name)


async def leader(session: aiohttp.ClientSession, daemon: Goipd) -> float | None:
    try:
        async with session.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
            return sample(await resp.text(), "goipd_instance_leader", server="hq")
    except (aiohttp.ClientError, TimeoutError):
        return None


async def submit(
    session: aiohttp.ClientSession,
    instances: list[Goipd],
    dead: set[int],
    index: int,
    accepted: dict[str, str],
) -> None:
    """Message i goes to instance i % 2; while that one is dead, to the other one, with the
    same idempotency key (a client retrying through a failover)."""
    body = {"to": [f"+8869{index:08d}"], "text": f"ha {index}", "idempotency_key": f"ha-{index}"}
    attempt = index
    while True:
        daemon = instances[attempt % len(instances)]
        attempt += 1
        if id(daemon) in dead:
            continue
        try:
            url = f"http://127.0.0.1:{daemon.port}/api/v1/messages"
            async with session.post(url, json=body) as resp:
                if resp.status in (200, 202):
                    accepted[body["to"][0]] = (await resp.json())["id"]
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.05)


async def test_two_instances_survive_a_sigkill_without_duplicates(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    pg_schema: str,
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    balancer, balancer_port = await start_balancer(ports)
    lines = [{"line_id": f"G{100 + i}"} for i in range(20)]
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{balancer_port}", hq=lines))
    alpha = instance_config(sim, ports[0], "alpha", pg_schema, tmp_path)
    beta = instance_config(sim, ports[1], "beta", pg_schema, tmp_path)
    instances = [alpha, beta]
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            await run(session, sim, instances)
    finally:
        for daemon in instances:
            daemon.ensure_dead()
        await balancer.cleanup()


async def run(
    session: aiohttp.ClientSession, sim: RunningSimulator, instances: list[Goipd]
) -> None:
    for daemon in instances:
        daemon.start()
    for daemon in instances:
        await daemon.ready(session)
    leaders = [await leader(session, daemon) for daemon in instances]
    assert sorted(leaders) == [0.0, 1.0], f"exactly one instance polls hq: {leaders}"
    owner = instances[leaders.index(1.0)]
    survivor = instances[leaders.index(0.0)]

    accepted: dict[str, str] = {}
    dead: set[int] = set()
    sem = asyncio.Semaphore(16)

    async def limited(i: int) -> None:
        async with sem:
            await submit(session, instances, dead, i, accepted)

    producer = asyncio.gather(*(limited(i) for i in range(MESSAGES)))
    while len(accepted) < KILL_AFTER:
        await asyncio.sleep(0.02)
    killed_at = time.time()
    dead.add(id(owner))
    owner.kill()
    while await leader(session, survivor) != 1.0:
        assert time.time() - killed_at < 10, "the survivor never took the polling lease"
        await asyncio.sleep(0.05)
    took_over = time.time() - killed_at
    await producer
    assert len(accepted) == MESSAGES

    await final_states(session, survivor.port, accepted)

    sent = Counter(
        entry["number"] for entry in await control(session, sim, "GET", "servers/hq/sent")
    )
    assert set(sent) == set(accepted), "a recipient was never sent"
    duplicates = {number: count for number, count in sent.items() if count > 1}
    assert not duplicates, f"{len(duplicates)} sent twice, e.g. {next(iter(duplicates.items()))}"

    # Polling: one instance at a time before the kill (two would double the querylines rate),
    # and the survivor's first poll within two poll intervals of the kill.
    polls: list[float] = await control(session, sim, "GET", "servers/hq/polls")
    steady = [t for t in polls if killed_at - 6 * POLL <= t < killed_at - POLL]
    assert len(steady) <= 5 + 1, f"{len(steady)} polls in 5 intervals: more than one poller"
    first_after = min(t for t in polls if t > killed_at)
    assert first_after - killed_at <= 2 * POLL, f"first poll {first_after - killed_at:.2f}s after"
    assert took_over <= 2 * POLL, f"survivor became leader {took_over:.2f}s after the kill"
    after = [t for t in polls if t > first_after]
    gaps = [b - a for a, b in itertools.pairwise([first_after, *after])]
    # A poll skipped would leave a gap of two intervals; a loaded machine (the survivor takes
    # over dispatch at the same time) has started one 0.51 interval late.
    assert after and max(gaps) <= 1.75 * POLL, f"survivor polls irregularly: {max(gaps):.2f}s"

    log = survivor.log.read_text()
    print(
        f"\nleader after {took_over:.2f}s, first poll after {first_after - killed_at:.2f}s; "
        f"survivor adopted {log.count('claims_adopted')} and re-queued "
        f"{log.count('claims_requeued')} batches of the dead instance's claims"
    )
    assert survivor.stop() == 0
