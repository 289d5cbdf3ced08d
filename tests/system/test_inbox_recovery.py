"""No inbound SMS lost, goipd as its own process in front of a v1.28.4 SMS Server: the server
pushes each SMS once, so SMS that arrive while goipd is down reach it only through the inbox,
read at start; pushes and reads of the same SMS racing each other store it once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually
from tests.helpers.cloud import serve_routes
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.processes import Goipd, free_port, process_config, start_process

Simulator = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
LINES = [{"line_id": "G101"}, {"line_id": "G102"}, {"line_id": "G103"}]


@asynccontextmanager
async def forwarded_texts() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A webhook on loopback that counts the texts goipd forwards to it."""
    texts: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        texts[(await request.json())["text"]] += 1
        return web.json_response({})

    async with serve_routes(web.post("/inbound", hook)) as base:
        yield f"{base}/inbound", texts


async def stored(session: aiohttp.ClientSession, port: int) -> list[dict[str, Any]]:
    async with session.get(f"http://127.0.0.1:{port}/api/v1/inbound?limit=1000") as resp:
        assert resp.status == 200
        return (await resp.json())["inbound"]  # type: ignore[no-any-return]


async def arrive(
    session: aiohttp.ClientSession, sim: RunningSimulator, line: str, text: str, **extra: Any
) -> str:
    body = {"goip_line": line, "from_number": "+886912000001", "content": text, **extra}
    reply = await control(session, sim, "POST", "servers/hq/inbound", body)
    return str(reply["push"])


def goipd(sim: RunningSimulator, port: int, tmp_path: Path, forward_to: str) -> Goipd:
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        inbound={"forward_urls": [forward_to]},
    )
    config["servers"][0]["inbox_interval"] = "10s"
    return start_process(config, port, tmp_path)


async def test_sms_that_arrive_while_goipd_is_down_are_stored_once_after_restart(
    simulator: Simulator, tmp_path: Path
) -> None:
    port = free_port()
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", hq=LINES))
    async with (
        forwarded_texts() as (hook, forwarded),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as session,
    ):
        daemon = goipd(sim, port, tmp_path, hook)
        try:
            # The first SMS comes before goipd ever ran: its read at start stores it, and the
            # next read goes back only to a little before it (the watermark).
            assert await arrive(session, sim, "G101", "before") != "ok"
            daemon.start()
            await daemon.ready(session)

            async def first_stored() -> bool:
                return [r["text"] for r in await stored(session, port)] == ["before"]

            await eventually(first_stored, within=10, what="the first SMS stored")
            assert daemon.stop() == 0
            # 20 SMS on three lines, one of them renamed since (its SMS push null): every push
            # fails, goipd is down; several share a second, as SMS often do. Stamped after
            # "before", as the server stamps them (stamps of a past day are below the
            # watermark: this test failed so whenever its read at start saw "before").
            expected = {"before"}
            after = datetime.now().replace(microsecond=0) + timedelta(seconds=1)
            for n in range(20):
                line = ("G101", "G102", "G7-renamed")[n % 3]
                text = f"sms {n} <&> 'quoted'\nline two" if n % 5 == 0 else f"sms {n}"
                when = (after + timedelta(seconds=n // 4)).strftime("%Y-%m-%d %H:%M:%S")
                assert await arrive(session, sim, line, text, recv_time=when) != "ok"
                expected.add(text)
            daemon.start()
            await daemon.ready(session)

            async def all_stored() -> bool:
                return {r["text"] for r in await stored(session, port)} == expected

            await eventually(all_stored, within=10, what="every SMS stored")
            rows = await stored(session, port)
            assert Counter(r["text"] for r in rows) == Counter(expected)
            assert {r["line"] for r in rows} == {"G101", "G102", "G7-renamed"}

            async def all_forwarded() -> bool:
                return set(forwarded) == expected

            await eventually(all_forwarded, within=10, what="every SMS forwarded")
        finally:
            daemon.ensure_dead()


async def test_pushes_racing_inbox_reads_store_each_sms_once(
    simulator: Simulator, tmp_path: Path
) -> None:
    port = free_port()
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", hq=LINES))
    rng = random.Random(18)
    async with (
        forwarded_texts() as (hook, _),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as session,
    ):
        daemon = goipd(sim, port, tmp_path, hook)
        try:
            daemon.start()
            await daemon.ready(session)
            # Each SMS is pushed a random while after it is stored; goipd is killed and started
            # again meanwhile, so its read at start and the later pushes race, and some pushes
            # find it down.
            texts = [f"race {n}" for n in range(30)]
            for text in texts:
                await arrive(session, sim, "G102", text, push_after=rng.uniform(0.0, 4.0))
            await asyncio.sleep(1.0)
            daemon.kill()
            await asyncio.sleep(0.5)
            daemon.start()
            await daemon.ready(session)
            await asyncio.sleep(4.0)  # every push has been tried

            async def all_stored() -> bool:
                return {r["text"] for r in await stored(session, port)} == set(texts)

            await eventually(all_stored, within=15, what="every SMS stored")
            assert Counter(r["text"] for r in await stored(session, port)) == Counter(texts)
        finally:
            daemon.ensure_dead()
