"""Polling ownership: the instance holding a server's lease polls it, logs its transitions and
exports its fleet metrics; the others copy its snapshots silently and route with the same view.
Two daemons on one PostgreSQL schema against the simulator."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from goipd.app import Daemon
from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import POLL, control, daemon_config, fleet_spec
from tests.helpers.ledgers import PG_URL


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield schema
    await PostgresLedger(PG_URL, schema=schema).drop_schema()


@pytest.fixture
def daemon_factory(
    pg_schema: str, daemon_factory: Callable[..., Awaitable[Daemon]]
) -> Callable[..., Awaitable[Daemon]]:
    """tests/conftest.py's, set up after pg_schema, so torn down before it: the daemons stop
    before their schema is dropped (dropped under running instances, DROP SCHEMA ... CASCADE
    can deadlock with their transactions)."""
    return daemon_factory


async def leader(http: aiohttp.ClientSession, daemon: Daemon) -> float | None:
    async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
        return sample(await resp.text(), "goipd_instance_leader", server="hq")


async def lines(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{daemon.port}/api/v1/lines?server=hq") as resp:
        return {
            item["line"]: (item["state"], item["online"]) for item in (await resp.json())["lines"]
        }


async def sent_through_both(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    daemons: list[Daemon],
    count: int,
    text: str,
    *,
    expected: int,
    settle: float,
) -> int:
    """Post `count` messages to the two instances in turn, wait until the simulator has sent
    `expected`, give them `settle` seconds to send more, and return how many hq sent."""
    for index in range(count):
        daemon = daemons[index % 2]
        body = {"to": [f"+8869{index:08d}"], "text": f"{text} {index}"}
        async with http.post(f"http://127.0.0.1:{daemon.port}/api/v1/messages", json=body) as resp:
            assert resp.status == 202

    async def sent() -> int:
        return len(await control(http, sim, "GET", "servers/hq/sent"))

    async def enough_sent() -> bool:
        return await sent() >= expected

    await eventually(enough_sent, 10, f"{expected} sends through hq")
    await asyncio.sleep(settle)
    return await sent()


async def test_one_instance_polls_the_other_follows_and_takes_over_on_stop(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[[dict[str, Any]], Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    storage = {"url": PG_URL, "pg_schema": pg_schema}

    def config(name: str) -> dict[str, Any]:
        return daemon_config(
            sim, ["hq"], tmp_path, storage=storage, ha={"instance_id": name, "lease_ttl": "1s"}
        )

    with capture_logs() as logs:
        one = await daemon_factory(config("one"))
        two = await daemon_factory(config("two"))
        # Ready means the whole fleet: the follower starts with the owner's snapshot.
        assert await lines(http, two) == await lines(http, one) != {}
        assert (await leader(http, one), await leader(http, two)) == (1.0, 0.0)
        async with http.get(f"http://127.0.0.1:{two.port}/metrics") as resp:
            assert sample(await resp.text(), "goipd_server_up", server="hq") is None

        started = time.time()
        await control(http, sim, "PATCH", "servers/hq/lines/G102", {"online": False})

        async def follower_sees_offline() -> bool:
            return (await lines(http, two)).get("G102") == ("offline", False)

        await eventually(follower_sees_offline, 5, "the follower copies the owner's poll")
        await asyncio.sleep(2.0)
        ended = time.time()
        polls = [t for t in await control(http, sim, "GET", "servers/hq/polls") if t >= started]
        # One poller polls once per interval; two would poll twice as often.
        assert len(polls) <= (ended - started) / POLL + 2, "more than one instance polls hq"
    disconnects = [e for e in logs if e["event"] == "line_disconnected"]
    assert len(disconnects) == 1, "the transition is logged once, by the polling instance"

    # A graceful stop hands the lease over at once (no waiting for it to expire).
    stopped_at = time.monotonic()
    await one.stop(grace=2.0)

    async def two_leads() -> bool:
        return await leader(http, two) == 1.0

    await eventually(two_leads, 3, "the other instance takes the released lease")
    assert time.monotonic() - stopped_at < 1.0
    await control(http, sim, "PATCH", "servers/hq/lines/G102", {"online": True})

    async def two_polls() -> bool:
        return (await lines(http, two)).get("G102") == ("registered", True)

    await eventually(two_polls, 3, "the new owner polls hq itself")


async def test_two_instances_keep_one_lines_rate_together(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[[dict[str, Any]], Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    storage = {"url": PG_URL, "pg_schema": pg_schema}
    daemons = [
        await daemon_factory(
            daemon_config(
                sim,
                ["hq"],
                tmp_path,
                storage=storage,
                ha={"instance_id": name},
                routing={"line_rate_per_minute": 6, "retry_delay": "100ms"},
                api={"duplicate_window": "0s"},
            )
        )
        for name in ("one", "two")
    ]
    # Each instance's own rate window would let it send 6 more: together they send no more.
    assert await sent_through_both(http, sim, daemons, 20, "rate", expected=6, settle=3.0) == 6


async def test_two_instances_share_one_lines_quota(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[[dict[str, Any]], Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101", "day_remain_sms": 4}]))
    storage = {"url": PG_URL, "pg_schema": pg_schema}
    daemons = []
    for name in ("one", "two"):
        config = daemon_config(
            sim,
            ["hq"],
            tmp_path,
            storage=storage,
            ha={"instance_id": name},
            routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
            api={"duplicate_window": "0s"},
        )
        # No poll between the sends: each instance's own copy of the quota says 4 left.
        config["servers"][0]["poll_interval"] = "30s"
        daemons.append(await daemon_factory(config))
    # Together the instances send what the quota allows, and never one the SIM would refuse.
    assert await sent_through_both(http, sim, daemons, 10, "quota", expected=4, settle=2.0) == 4
    for daemon in daemons:
        async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
            text = await resp.text()
        rejected = sample(
            text, "goipd_sms_sent_total", route="goip", server="hq", line="G101", result="rejected"
        )
        assert not rejected, f"{rejected} sends the SIM refused: over its quota"


async def test_only_the_polling_instance_asks_the_server_about_unreported_sends(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[[dict[str, Any]], Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))  # no push URLs: no reports
    storage = {"url": PG_URL, "pg_schema": pg_schema}
    reconcile = {"interval": "1h", "query_after": "100ms", "report_deadline": "1h"}
    owner, follower = [
        await daemon_factory(
            daemon_config(
                sim, ["hq"], tmp_path, storage=storage, ha={"instance_id": n}, reconcile=reconcile
            )
        )
        for n in ("owner", "follower")
    ]
    assert owner.registry.servers["hq"].owned and not follower.registry.servers["hq"].owned
    base = f"http://127.0.0.1:{follower.port}"
    async with http.post(
        f"{base}/api/v1/messages", json={"to": ["+886912345678"], "text": "x"}
    ) as r:
        message_id = (await r.json())["id"]

    async def state() -> str:
        async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
            return str((await resp.json())["recipients"][0]["state"])

    async def submitted_and_sent() -> bool:
        return (
            await state() == "submitted"
            and len(await control(http, sim, "GET", "servers/hq/sent")) == 1
        )

    await eventually(submitted_and_sent, 10, "the follower sent it; no report came")
    await asyncio.sleep(0.2)
    await follower.reconciler.run_once()
    assert await state() == "submitted"
    assert sim.fleet.server("hq").counters["requests_querysms"] == 0
    await owner.reconciler.run_once()
    assert await state() == "delivered"
    assert sim.fleet.server("hq").counters["requests_querysms"] == 1
