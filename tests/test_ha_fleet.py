"""Polling ownership: the instance holding a server's lease polls it, logs its transitions and
exports its fleet metrics; the others copy its snapshots silently and route with the same view.
Unit tests of the snapshot, then two daemons on one PostgreSQL schema against the simulator."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from goipd.app import Daemon
from goipd.config import ConfigError, RouteTarget, RoutingSettings, parse_settings
from goipd.dispatch.routing import CloudChoice, LineChoice, Router
from goipd.fleet import snapshot
from goipd.fleet.collector import FleetCollector
from goipd.fleet.ha import default_instance_id
from goipd.fleet.registry import LineRegistry, LineState
from goipd.ledger.postgres import PostgresLedger
from goipd.metrics.catalog import Metrics
from goipd.sim.goip import RunningSimulator
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus
from tests.conftest import POLL, control, daemon_config, eventually, fleet_spec, sample
from tests.test_ledger import PG_URL

NOW = 1_800_000_000.0


def status(line_id: str, online: bool = True, day: int | None = None) -> LineStatus:
    return LineStatus(line_id, online, online, "LOGIN" if online else "LOGOUT", None, day)


def test_a_snapshot_copies_the_server_silently_and_keeps_what_the_follower_learned() -> None:
    owner, follower = LineRegistry(["hq"]), LineRegistry(["hq"])
    follower.servers["hq"].owned = False
    owner.apply_poll("hq", [status("G1"), status("G2", day=5)], NOW)
    owner.apply_poll("hq", [status("G1", online=False), status("G2", day=4)], NOW + 1)
    with capture_logs() as logs:
        snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert logs == [], "copying a snapshot logs nothing: the owner logged the transitions"
    copied = follower.servers["hq"]
    assert copied.up and copied.polled and copied.last_poll == NOW + 1
    g1, g2 = copied.lines["G1"], copied.lines["G2"]
    assert g1.state is LineState.OFFLINE and g1.online_changes == 1 and g1.first_seen == NOW
    assert g2.day_remain_sms == 4 and g2.state is LineState.REGISTERED

    # What the follower learned itself (a quarantine after errors it saw) survives the next
    # copy; a copy that changes no line set does not make routing rebuild its order.
    g2.quarantined_until = NOW + 600
    generation = follower.generation
    owner.apply_poll("hq", [status("G1"), status("G2", day=3)], NOW + 2)
    snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert copied.lines["G2"] is g2 and g2.quarantined_until == NOW + 600 and g2.day_remain_sms == 3
    assert copied.lines["G1"].online and follower.generation == generation

    # A line gone and a server failing travel too, and reshape routing.
    owner.apply_poll("hq", [status("G1")], NOW + 3)
    owner.apply_failure("hq", ErrorReason.TIMEOUT, "querylines: no reply", NOW + 4)
    snapshot.apply(follower, "hq", snapshot.encode(owner.servers["hq"]))
    assert copied.lines["G2"].gone and follower.generation > generation
    assert not copied.up and copied.last_error_reason is ErrorReason.TIMEOUT

    for damaged in ("{", '{"format": 99}', '{"format": 1, "up": true}', "[]"):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.apply(follower, "hq", damaged)


def test_fleet_metrics_come_from_the_polling_instance_only() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], NOW)
    metrics = Metrics()
    FleetCollector(registry, metrics)
    metrics.instance_leader.labels("hq").set(1)
    text = metrics.render().decode()
    assert sample(text, "goipd_line_online", server="hq", line="G1") == 1.0
    assert sample(text, "goipd_server_up", server="hq") == 1.0
    registry.servers["hq"].owned = False
    metrics.instance_leader.labels("hq").set(0)
    for text in (metrics.render().decode(), _collected(metrics)):
        assert sample(text, "goipd_line_online", server="hq", line="G1") is None
        assert sample(text, "goipd_server_up", server="hq") is None
    assert sample(metrics.render().decode(), "goipd_instance_leader", server="hq") == 0.0


def _collected(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield schema
    await PostgresLedger(PG_URL, schema=schema).drop_schema()


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


def test_ha_config_defaults_and_errors_name_the_key() -> None:
    servers = (
        "servers:\n"
        "- {name: a, url: 'http://h', username: u, password: p, poll_interval: 5s, timeout: 1s}\n"
        "- {name: b, url: 'http://h', username: u, password: p, poll_interval: 2m}\n"
    )
    settings = parse_settings(servers)
    assert settings.ha.instance_id is None and settings.lease_ttl == 5.0
    assert parse_settings("").lease_ttl == 15.0  # no server: the longest default
    fast = "servers: [{name: a, url: 'http://h', username: u, password: p, "
    fast += "poll_interval: 500ms, timeout: 100ms}]\n"
    assert parse_settings(fast).lease_ttl == 1.0
    assert parse_settings(servers + "ha: {instance_id: gw-a.1, lease_ttl: 30s}").lease_ttl == 30.0
    for text, expected in (
        (
            "ha: {instance_id: 'gw a'}",
            'ha.instance_id: expected 1-64 of A-Z a-z 0-9 _ . -, got "gw a"',
        ),
        ("ha: {lease_ttl: 100ms}", "ha.lease_ttl: must be between 300ms and 10m, got 0.1s"),
        ("ha: {lease: 1s}", "ha.lease: unknown key"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_settings(text, source=Path("goipd.yaml"))
        assert info.value.lines() == [f"goipd.yaml: {expected}"]


def test_the_default_instance_id_is_the_host_and_on_postgresql_a_new_suffix() -> None:
    first, second = default_instance_id(), default_instance_id()
    assert first != second
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", first)
    assert default_instance_id(shared=False) == first.rsplit("-", 1)[0]


def test_sends_that_do_not_happen_give_the_line_back() -> None:
    """Planned sends another instance claimed first (or the shared rate refused) return their
    place in the line's rate window and quota."""
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1", day=10)], NOW)
    router = Router(registry, RoutingSettings(line_rate_per_minute=3), (), {}, ())
    targets = (RouteTarget(server="*"),)
    choice = router.choose(targets, NOW, want=5)
    assert isinstance(choice, LineChoice) and choice.capacity == 3
    router.record_use(choice, 3, NOW)
    assert router.choose(targets, NOW) is None
    router.release_use(choice, 2)
    again = router.choose(targets, NOW, want=5)
    assert isinstance(again, LineChoice) and again.capacity == 2
    assert registry.line("hq", "G1").day_remain_sms == 9  # type: ignore[union-attr]
    router.release_use(CloudChoice("smsgo", 1), 1)  # not a line: nothing to give back


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
