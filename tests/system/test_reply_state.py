"""c123 hands each reply out once. goipd is SIGKILLed with its reply fetch on the way (c123 hands
the replies out to a dead process), and every goipd after it is SIGKILLed while it holds the
rest of the plan of hours to fetch again (`provider_state` in the ledger): each restarted goipd
(on PostgreSQL: the instance that takes the c123 lease over) goes on with the plan exactly as
the first would have, and every reply is stored once, identical ones as often as they came.

goipd polls c123 once at start and then every 10 minutes (c123's own limit), so each goipd
process fetches one hour: the test kills and starts one per hour of the plan. A loopback proxy in
front of the c123 simulator holds the first plain fetch until goipd is dead, then lets it reach
the simulator."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from goipd.clouds.reply_recovery import DOCUMENT, ReplyRecovery
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually
from tests.helpers.daemons import API_TOKEN, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.processes import Goipd, free_port, process_config, start_process

C123_PASSWORD = "c123-password"
LONG = "a reply long enough that every cut of the answer falls inside one"


class HoldingProxy:
    """c123 as goipd reaches it: every request goes on to the simulator, except the first plain
    reply fetch (`/rx/` without `time=`), which waits here until `deliver_held` sends it on."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.held = asyncio.Event()
        self.held_path: str | None = None
        self.fetches: list[str] = []
        """The `time=` of each reply fetch that reached the simulator ("" for a plain one)."""
        self._release = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path.startswith("/rx/") and "time" not in request.query and not self.held_path:
            self.held_path = request.path_qs
            self.held.set()
            await self._release.wait()
            return web.Response(status=503)
        return await self._send(request.method, request.path_qs, await request.read())

    async def _send(self, method: str, path_qs: str, body: bytes) -> web.Response:
        if path_qs.startswith("/rx/"):
            self.fetches.append(URL(path_qs).query.get("time", ""))
        async with self._session.request(method, self.target + path_qs, data=body) as resp:
            return web.Response(status=resp.status, body=await resp.read())

    async def deliver_held(self) -> None:
        """The held fetch reaches c123, which hands the replies out (to nobody: goipd is dead)."""
        assert self.held_path is not None
        await self._send("GET", self.held_path, b"")
        self._release.set()

    async def close(self) -> None:
        self._release.set()
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def c123() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(rx_min_interval=0.0, password=C123_PASSWORD)
    yield sim
    await sim.close()


@pytest.fixture
async def proxy(c123: RunningC123Sim) -> AsyncIterator[HoldingProxy]:
    running = HoldingProxy(c123.url)
    yield running
    await running.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        yield SqliteFile(tmp_path / "goipd.db")
        return
    schema = f"test_replies_{uuid.uuid4().hex[:10]}"
    yield PgSchema(schema)
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class Ledger:
    """The ledger the goipd processes share, read from outside them."""

    storage: dict[str, str]
    shared = False

    async def document(self) -> tuple[str, int] | None:
        raise NotImplementedError

    async def plan(self) -> ReplyRecovery | None:
        found = await self.document()
        return None if found is None else ReplyRecovery.from_json(*found)


class SqliteFile(Ledger):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.storage = {"url": f"sqlite:///{path}"}

    async def document(self) -> tuple[str, int] | None:
        if not self.path.exists():
            return None
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT body, version FROM provider_state WHERE provider = 'c123' AND name = ?",
                (DOCUMENT,),
            ).fetchone()
        except sqlite3.OperationalError:  # not created yet
            return None
        finally:
            conn.close()
        return None if row is None else (str(row[0]), int(row[1]))


class PgSchema(Ledger):
    shared = True

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.storage = {"url": PG_URL, "pg_schema": schema}

    async def document(self) -> tuple[str, int] | None:
        conn = await asyncpg.connect(PG_URL)
        try:
            row = await conn.fetchrow(
                f'SELECT body, version FROM "{self.schema}".provider_state'
                " WHERE provider = 'c123' AND name = $1",
                DOCUMENT,
            )
        except asyncpg.UndefinedTableError:
            return None
        finally:
            await conn.close()
        return None if row is None else (str(row[0]), int(row[1]))


def after_one_poll(plan: ReplyRecovery) -> ReplyRecovery:
    """What the next poll makes of `plan`: an unfinished fetch's hours planned, and the first
    planned hour fetched again."""
    expected = replace(plan, hours=plan.hours.copy())
    if expected.fetching is not None:
        expected.fetch_lost(expected.fetching)
    expected.hour_fetched()
    return expected


async def test_replies_a_killed_goipd_was_handed_are_fetched_again_and_stored_once(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    c123: RunningC123Sim,
    proxy: HoldingProxy,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    c123_url = await proxy.start()
    started: list[Goipd] = []

    def instance() -> Goipd:
        port = free_port()
        name = f"goipd{len(started)}"
        config = process_config(
            sim,
            port,
            ledger.storage,
            providers={
                "c123": {
                    "uid": c123.sim.uid,
                    "password": C123_PASSWORD,
                    "url": c123_url,
                    "timeout": "20s",
                }
            },
            **({"ha": {"instance_id": name, "lease_ttl": "1s"}} if ledger.shared else {}),
        )
        daemon = start_process(config, port, tmp_path, name)
        started.append(daemon)
        daemon.start()
        return daemon

    # The lost fetch reaches back an hour: its plan has two hours at least, each with replies,
    # and two identical replies within one second are two replies.
    now = datetime.now(UTC)
    c123.sim.add_reply("13800138001", f"an hour ago: {LONG}", at=now - timedelta(minutes=65))
    c123.sim.add_reply("13800138002", "1", at=now)
    c123.sim.add_reply("13800138002", "1", at=now)
    c123.sim.add_reply("13800138003", f"now: {LONG}", at=now)
    replies = Counter((f"+86{r.from_number}", r.content) for r in c123.sim.pending)

    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        try:
            first = instance()
            await asyncio.wait_for(proxy.held.wait(), 30)
            plan = await ledger.plan()
            assert plan is not None and plan.fetching is not None, "fetched unannounced"
            # On PostgreSQL the next instance is up and waiting for the c123 lease.
            current = instance() if ledger.shared else None
            if current is not None:
                await current.ready(http)
            first.kill()
            await proxy.deliver_held()
            assert c123.sim.pending == [] and len(c123.sim.handed_out) == 4
            assert proxy.fetches == [""]

            kills_holding_a_plan = 0
            planned: int | None = None
            while True:
                before = await ledger.plan()
                assert before is not None
                expected = after_one_poll(before)
                if planned is None:
                    planned = len(expected.hours) + 1
                if current is None:  # SQLite: one instance at a time
                    current = instance()

                async def polled(before: ReplyRecovery = before) -> bool:
                    plan = await ledger.plan()
                    return plan is not None and plan.version > before.version + (
                        1 if before.fetching is not None else 0
                    )

                await eventually(polled, 30, "the next goipd fetched an hour again")
                plan = await ledger.plan()
                assert plan is not None
                assert (plan.fetching, plan.hours, plan.tries) == (None, expected.hours, 0)
                if not plan.hours:
                    break
                # On PostgreSQL the successor is waiting for the lease before the holder dies.
                successor = instance() if ledger.shared else None
                if successor is not None:
                    await successor.ready(http)
                current.kill()
                kills_holding_a_plan += 1
                current = successor
            assert kills_holding_a_plan >= 1 and current is not None

            async with http.get(f"http://127.0.0.1:{current.port}/api/v1/inbound") as resp:
                assert resp.status == 200
                inbound = (await resp.json())["inbound"]
            stored = Counter((i["from"], i["text"]) for i in inbound if i["source"] == "c123")
            assert stored == replies
            # Every hour once, then nothing plain: c123 had nothing more to hand out.
            assert proxy.fetches[0] == "" and "" not in proxy.fetches[1:]
            assert planned is not None and len(proxy.fetches) == 1 + planned
        finally:
            for daemon in started:
                daemon.ensure_dead()
