"""Inbox recovery against the simulated SMS Server over loopback HTTP, inside one goipd: pages
whose same-second SMS swap places between requests, pushes and reads of the same SMS, texts the
page escapes, a line that is gone, and reads that fail. goipd as a process, stopped while SMS
arrive, is in tests/system/test_inbox_recovery.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.app import Daemon
from goipd.model import InboundRecord
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.pipeline import connect_push

Simulator = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
DaemonFactory = Callable[..., Awaitable[Daemon]]
LINES = [{"line_id": "G101"}, {"line_id": "G102"}]


async def start(
    simulator: Simulator, daemon_factory: DaemonFactory, tmp_path: Path, **server: Any
) -> tuple[RunningSimulator, Daemon]:
    sim = await simulator(fleet_spec(hq=LINES))
    config = daemon_config(sim, ["hq"], tmp_path)
    # Reads only when a test asks: the one at start finds an empty inbox.
    config["servers"][0].update({"inbox_interval": "1h", **server})
    daemon = await daemon_factory(config)

    async def first_read_done() -> bool:
        return await reads(daemon, "ok") >= 1

    await eventually(first_read_done, within=5, what="the read at start")
    return sim, daemon


async def arrive(
    http: aiohttp.ClientSession, sim: RunningSimulator, line: str, text: str, **extra: Any
) -> dict[str, Any]:
    body = {"goip_line": line, "from_number": "+886912000001", "content": text, **extra}
    return await control(http, sim, "POST", "servers/hq/inbound", body)  # type: ignore[no-any-return]


async def stored(daemon: Daemon) -> list[InboundRecord]:
    return await daemon.ledger.list_inbound(10_000, None)


async def read(daemon: Daemon) -> int:
    return await daemon.inbox.read(daemon.poller.servers["hq"])


async def reads(daemon: Daemon, result: str) -> float:
    text = (await daemon.metrics.render_async()).decode()
    return sample(text, "goipd_inbox_reads_total", server="hq", result=result) or 0.0


async def test_every_sms_of_several_pages_is_stored_once_though_seconds_swap_pages(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, daemon = await start(simulator, daemon_factory, tmp_path)
    # 75 SMS in 5 seconds: 3 pages, each ending inside a second whose SMS the simulator
    # orders anew on every request, as MySQL may.
    for n in range(75):
        await arrive(http, sim, "G101", f"sms {n}", recv_time=f"2026-12-07 10:00:0{n // 15}")
    assert await read(daemon) == 75
    texts = Counter(record.content for record in await stored(daemon))
    assert texts == Counter(f"sms {n}" for n in range(75))
    assert await read(daemon) == 0
    assert len(await stored(daemon)) == 75
    text = (await daemon.metrics.render_async()).decode()
    assert sample(text, "goipd_inbound_recovered_total", server="hq") == 75
    assert await reads(daemon, "ok") == 3  # with the one at start
    assert await daemon.ledger.inbox_watermark("hq") == "2026-12-07 10:00:04"


async def test_pushed_and_read_sms_are_stored_once_whichever_comes_first(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, daemon = await start(simulator, daemon_factory, tmp_path)
    await connect_push(http, sim, daemon, ["hq"])
    tricky = '<b>Tom & Jerry\'s</b> "quote"\n  second line  '
    pushed = await arrive(http, sim, "G101", tricky)
    assert pushed["push"] == "ok"
    # The line was renamed: the push says null, the inbox still has the name it came in on.
    renamed = await arrive(http, sim, "G9-old", "to a line since renamed")
    assert renamed["report"]["goip_line"] is None
    # Read from the inbox before its push arrives: the push is the duplicate then.
    await arrive(http, sim, "G102", "read first", push_after=1.0)
    assert await read(daemon) == 1

    async def pushed_all() -> bool:
        return sim.fleet.servers["hq"].counters["push_inbound_ok"] == 3

    await eventually(pushed_all, within=5, what="the late push")
    records = {record.content: record for record in await stored(daemon)}
    assert sorted(records) == sorted([tricky, "to a line since renamed", "read first"])
    assert records["to a line since renamed"].line == "G9-old"
    assert records[tricky].line == "G101"
    text = (await daemon.metrics.render_async()).decode()
    assert sample(text, "goipd_inbound_sms_total", server="hq", line="unknown") == 1
    assert sample(text, "goipd_inbound_recovered_total", server="hq") == 1


async def test_a_first_read_takes_the_lookback_and_later_reads_start_before_the_last(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, daemon = await start(simulator, daemon_factory, tmp_path, inbox_lookback="1h")
    await arrive(http, sim, "G101", "years ago", recv_time="2024-01-01 09:00:00")
    await arrive(http, sim, "G101", "an hour ago", recv_time="2026-12-07 09:30:00")
    await arrive(http, sim, "G101", "now", recv_time="2026-12-07 10:00:00")
    assert await read(daemon) == 2
    # Later: one that came in during the read's last second, one stored late with an older
    # time inside the overlap, one older than that (found by no read: the documented limit).
    await arrive(http, sim, "G101", "same second", recv_time="2026-12-07 10:00:00")
    await arrive(http, sim, "G101", "late row", recv_time="2026-12-07 09:55:00")
    await arrive(http, sim, "G101", "too late", recv_time="2026-12-07 09:40:00")
    assert await read(daemon) == 2
    assert {r.content for r in await stored(daemon)} == {
        "an hour ago",
        "now",
        "same second",
        "late row",
    }


async def test_reads_that_fail_are_counted_and_change_nothing(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, daemon = await start(simulator, daemon_factory, tmp_path)
    await arrive(http, sim, "G101", "waiting")
    await control(http, sim, "PATCH", "servers/hq", {"inbox_layout": "changed"})
    assert await read(daemon) == 0
    assert await reads(daemon, "inbox_layout") == 1
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "down"})
    assert await read(daemon) == 0
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "none"})
    await control(http, sim, "PATCH", "servers/hq", {"inbox_layout": "v1.28.4"})
    assert await stored(daemon) == []
    assert await daemon.ledger.inbox_watermark("hq") is None
    assert await read(daemon) == 1


async def test_a_refused_login_is_its_own_failure(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The web login strips ' from the password the JSON API takes as it is: polls and sends
    # work, every inbox read is refused.
    spec = fleet_spec(hq=LINES)
    spec["servers"][0]["password"] = "it's-secret"
    sim = await simulator(spec)
    config = daemon_config(sim, ["hq"], tmp_path)
    config["servers"][0].update({"inbox_interval": "1h", "password": "it's-secret"})
    daemon = await daemon_factory(config)

    async def refused_at_start() -> bool:
        return await reads(daemon, "inbox_login") == 1

    await eventually(refused_at_start, within=5, what="the read at start refused")
    await arrive(http, sim, "G101", "waiting")
    assert await read(daemon) == 0
    assert await reads(daemon, "inbox_login") == 2
    assert await stored(daemon) == []
    assert daemon.registry.servers["hq"].up


async def test_a_server_down_at_start_is_read_once_it_answers(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await simulator(fleet_spec(hq=LINES))
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "down"})
    await arrive(http, sim, "G101", "while goipd could not reach it")
    config = daemon_config(sim, ["hq"], tmp_path)
    config["servers"][0]["inbox_interval"] = "1h"
    daemon = await daemon_factory(config)
    await asyncio.sleep(1.0)
    assert await reads(daemon, "ok") == 0 and await reads(daemon, "connect") == 0
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "none"})

    async def read_once_up() -> bool:
        return await reads(daemon, "ok") == 1

    await eventually(read_once_up, within=5, what="the read after the server came back")
    assert [r.content for r in await stored(daemon)] == ["while goipd could not reach it"]
