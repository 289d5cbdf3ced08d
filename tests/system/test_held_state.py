"""State held for later survives a SIGKILL of goipd, with goipd as its own process and the cloud
simulators over loopback:

- a provider delivery report pushed before its send is recorded is held in the ledger: goipd is
  killed while it is held, and the restarted goipd (on PostgreSQL: the other instance) applies it
  exactly once when the send is recorded: the recipient delivered once, the counters once;
- a scheduled send whose hand-over to the provider failed is tried again at its retry time by the
  restarted goipd: not earlier, and not only at its send_at;
- a scheduled send killed in the middle of its hand-over is handed over again by the restarted
  goipd, still for its send_at: never sent at once as if it were due.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from goipd.sim.goip import RunningSimulator
from goipd.sim.smsgo import FIRST_MSGID
from tests.helpers.checks import eventually, sample
from tests.helpers.cloud import SMSGO_HOOK, Clouds, providers
from tests.helpers.daemons import fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.processes import Goipd, free_port, process_config, start_process

TW = "+886912345678"
CN = "+8613800138000"
RETRY = 4.0
"""routing.retry_delay of the hand-over test: a failed hand-over is tried again this long after."""


@pytest.fixture
async def sim(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
) -> RunningSimulator:
    return await simulator(fleet_spec(hq=[{"line_id": "G101", "reg": "LOGOUT"}]))


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_held_{uuid.uuid4().hex[:10]}"
    yield schema
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def started(pg_schema: str) -> AsyncIterator[list[Goipd]]:
    """The goipd processes a test starts, killed after it. Set up after pg_schema, so torn down
    before it: the schema is dropped once nothing uses it any more (dropped under running
    instances, DROP SCHEMA ... CASCADE can deadlock with their transactions)."""
    processes: list[Goipd] = []
    yield processes
    for process in processes:
        process.ensure_dead()


def goipd(
    sim: RunningSimulator,
    clouds: Clouds,
    storage: dict[str, str],
    directory: Path,
    name: str = "goipd",
    **overrides: Any,
) -> Goipd:
    """A goipd process routing Taiwan through smsgo and China through c123. No http.public_url:
    smsgo is given no report URL, so the only report is the one the test pushes."""
    port = free_port()
    configured = providers(clouds)
    configured["c123"]["schedule_ahead"] = "1h"
    config = process_config(
        sim,
        port,
        storage,
        providers=configured,
        routes=[
            {"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}]},
            {"via": [{"cloud": "smsgo"}]},
        ],
        **overrides,
    )
    return start_process(config, port, directory, name)


async def push_report(session: aiohttp.ClientSession, daemon: Goipd, msgid: str) -> None:
    url = f"http://127.0.0.1:{daemon.port}/hooks/smsgo/report/{SMSGO_HOOK}"
    query = {"msgid": msgid, "statusstr": "DELIVRD", "statuscode": "0", "dstaddr": "0912345678"}
    async with session.get(url, params=query) as resp:
        # Answered (and smsgo stops pushing) only once the report is stored.
        assert resp.status == 200
        assert await resp.text() == f"magicid=tccrd_sms_gateway_rpack\nmsgid={msgid}\n"


async def send(session: aiohttp.ClientSession, daemon: Goipd, body: dict[str, Any]) -> str:
    url = f"http://127.0.0.1:{daemon.port}/api/v1/messages"
    async with session.post(url, json=body) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def recipient(session: aiohttp.ClientSession, daemon: Goipd, message_id: str) -> Any:
    async with session.get(f"http://127.0.0.1:{daemon.port}/api/v1/messages/{message_id}") as resp:
        assert resp.status == 200
        return (await resp.json())["recipients"][0]


async def metrics(session: aiohttp.ClientSession, daemon: Goipd) -> str:
    async with session.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
        return await resp.text()


async def delivered_once(
    session: aiohttp.ClientSession, daemon: Goipd, message_id: str, msgid: str
) -> None:
    """The held report delivered the recipient, and the counters moved once."""

    async def delivered() -> bool:
        return (await recipient(session, daemon, message_id))["state"] == "delivered"

    await eventually(delivered, 10, "the held report applied")
    found = await recipient(session, daemon, message_id)
    assert found["route"] == "smsgo" and found["upstream_id"] == msgid
    # More retry rounds (one a second) change nothing.
    await asyncio.sleep(1.5)
    text = await metrics(session, daemon)
    held = {"provider": "smsgo"}
    assert sample(text, "goipd_cloud_reports_held_total", **held, outcome="matched") == 1
    assert sample(text, "goipd_cloud_reports_held_total", **held, outcome="held") is None
    assert sample(text, "goipd_sms_delivered_total", route="smsgo") == 1


async def test_a_held_report_survives_a_sigkill_and_is_applied_once(
    sim: RunningSimulator,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    started: list[Goipd],
    tmp_path: Path,
) -> None:
    storage = {"url": f"sqlite:///{tmp_path / 'goipd.db'}"}
    daemon = goipd(sim, clouds, storage, tmp_path)
    started.append(daemon)
    daemon.start()
    await daemon.ready(http)
    msgid = str(FIRST_MSGID + 1)  # the id the simulator gives its next send
    await push_report(http, daemon, msgid)
    text = await metrics(http, daemon)
    assert sample(text, "goipd_cloud_reports_held_total", provider="smsgo", outcome="held") == 1
    daemon.kill()

    daemon.start()
    await daemon.ready(http)
    message_id = await send(http, daemon, {"to": [TW], "text": "its report came first"})
    await delivered_once(http, daemon, message_id, msgid)
    assert daemon.stop() == 0
    with sqlite3.connect(tmp_path / "goipd.db") as db:
        assert db.execute("SELECT count(*) FROM held_reports").fetchone() == (0,)
    assert len(clouds.smsgo.sim.sends) == 1


async def test_the_other_instance_applies_a_report_held_by_one_that_died(
    sim: RunningSimulator,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    started: list[Goipd],
    pg_schema: str,
    tmp_path: Path,
) -> None:
    storage = {"url": PG_URL, "pg_schema": pg_schema}
    alpha, beta = (
        goipd(sim, clouds, storage, tmp_path, name, ha={"instance_id": name})
        for name in ("alpha", "beta")
    )
    started.extend((alpha, beta))
    alpha.start()
    beta.start()
    await asyncio.gather(alpha.ready(http), beta.ready(http))
    msgid = str(FIRST_MSGID + 1)
    await push_report(http, alpha, msgid)
    alpha.kill()

    message_id = await send(http, beta, {"to": [TW], "text": "held by the instance that died"})
    await delivered_once(http, beta, message_id, msgid)
    conn = await asyncpg.connect(PG_URL)
    try:
        held = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".held_reports')
    finally:
        await conn.close()
    assert held == 0


@pytest.fixture
async def scheduling(
    sim: RunningSimulator,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    started: list[Goipd],
    tmp_path: Path,
) -> Goipd:
    """goipd on SQLite (tmp_path/goipd.db), started, trying a failed hand-over again RETRY
    seconds after it failed."""
    storage = {"url": f"sqlite:///{tmp_path / 'goipd.db'}"}
    daemon = goipd(sim, clouds, storage, tmp_path, routing={"retry_delay": f"{RETRY:g}s"})
    started.append(daemon)
    daemon.start()
    await daemon.ready(http)
    return daemon


async def test_a_handover_cut_by_a_sigkill_is_handed_over_again_for_its_time(
    scheduling: Goipd, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon = scheduling
    # c123 sits on the hand-over: goipd is killed while it waits for the answer.
    clouds.c123.sim.set_fault("timeout", 60.0)
    message_id = await send(http, daemon, {"to": [CN], "text": "定时", "send_at": _in(90)})

    async def in_flight() -> bool:
        # Claimed (the API shows a claim as submitted) while c123 has nothing yet.
        found = await recipient(http, daemon, message_id)
        return found["state"] == "submitted" and found["attempts"] == 1

    await eventually(in_flight, 5, "the hand-over under way")
    await asyncio.sleep(0.3)
    daemon.kill()
    assert not clouds.c123.sim.sent
    clouds.c123.sim.set_fault("none")

    daemon.start()
    await daemon.ready(http)

    async def handed_over() -> bool:
        return bool(clouds.c123.sim.sent)

    await eventually(handed_over, RETRY + 5, "the hand-over made again")
    # As a hand-over, with c123's `time`: not a plain send, 85 seconds early.
    [sent] = clouds.c123.sim.sent
    assert sent["time"] and sent["mobiles"] == ["13800138000"]

    async def recorded() -> bool:
        found = await recipient(http, daemon, message_id)
        return (found["route"], found["attempts"], found["state"]) == ("c123", 2, "submitted")

    await eventually(recorded, 5, "the hand-over recorded")
    await asyncio.sleep(1.5)
    assert len(clouds.c123.sim.sent) == 1
    assert daemon.stop() == 0


def _in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


async def test_a_failed_handover_is_retried_at_its_time_after_a_sigkill(
    scheduling: Goipd, clouds: Clouds, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon = scheduling
    clouds.c123.sim.set_fault("http_500")
    submitted = time.time()
    # Due in 90 s: handed over now (schedule_ahead 1h), with c123's `time`.
    message_id = await send(http, daemon, {"to": [CN], "text": "定时", "send_at": _in(90)})

    async def refused() -> bool:
        # Queued again with c123's error: the refusal and its retry time are stored (attempts
        # alone counts the claim, made before c123 answered).
        found = await recipient(http, daemon, message_id)
        return found["state"] == "queued" and found["error"] is not None

    await eventually(refused, 5, "the hand-over refused by c123")
    refused_by = time.time()
    daemon.kill()
    clouds.c123.sim.set_fault("none")

    daemon.start()
    await daemon.ready(http)
    # The test shows something only if the restart came before the retry time.
    assert time.time() < submitted + RETRY, "goipd took longer to restart than the retry delay"

    async def handed_over() -> bool:
        return (await recipient(http, daemon, message_id))["state"] == "submitted"

    await eventually(handed_over, RETRY + 5, "the hand-over tried again")
    [sent] = clouds.c123.sim.sent
    # Not earlier than its retry time (the refusal came after the message was accepted), and
    # then, not only at its send_at (a plain send then would carry no `time`).
    assert submitted + RETRY <= sent["at"] <= refused_by + RETRY + 3
    assert sent["time"] and sent["mobiles"] == ["13800138000"]
    found = await recipient(http, daemon, message_id)
    assert (found["route"], found["attempts"]) == ("c123", 2)
    assert daemon.stop() == 0
    with sqlite3.connect(tmp_path / "goipd.db") as db:
        assert db.execute("SELECT count(*) FROM handover_retries").fetchone() == (0,)
