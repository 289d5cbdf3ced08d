"""Sending through an SMS Server that behaves like v1.28.4 (docs/real-sms-server.md): a slow
or dead engine, no php-mbstring, texts its SQL would eat. Every recipient gets exactly one task
on the simulated server, asserted from the simulator's own record of stored tasks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.pipeline import connect_push, message, send, wait_states

FINAL = {"sent", "delivered", "failed"}
SENT = {"sent", "delivered"}
Simulator = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
DaemonFactory = Callable[..., Awaitable[Daemon]]


async def start(
    simulator: Simulator,
    daemon_factory: DaemonFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    servers: dict[str, list[dict[str, Any]]],
    **server_settings: Any,
) -> tuple[RunningSimulator, Daemon, str]:
    sim = await simulator(fleet_spec(**servers))
    config = daemon_config(
        sim,
        list(servers),
        tmp_path,
        routing={"retry_delay": "100ms", "line_rate_per_minute": 600},
        api={"duplicate_window": "0s"},
    )
    for server in config["servers"]:
        server.update(server_settings)
    daemon = await daemon_factory(config)
    await connect_push(http, sim, daemon, list(servers))
    return sim, daemon, f"http://127.0.0.1:{daemon.port}"


async def tasks(http: aiohttp.ClientSession, sim: RunningSimulator, server: str) -> list[Any]:
    return await control(http, sim, "GET", f"servers/{server}/tasks")  # type: ignore[no-any-return]


async def one_task_each(
    http: aiohttp.ClientSession, sim: RunningSimulator, servers: list[str], numbers: list[str]
) -> None:
    stored: Counter[str] = Counter()
    for server in servers:
        stored.update(row["number"] for row in await tasks(http, sim, server))
    assert {number: stored[number] for number in numbers} == dict.fromkeys(numbers, 1), stored


async def metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        return await resp.text()


async def test_texts_arrive_exactly_or_fail_before_any_task(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _, base = await start(
        simulator, daemon_factory, http, tmp_path, {"hq": [{"line_id": "G101"}]}
    )
    carried = {
        "+886912340001": "don't stop",
        "+886912340002": "C:\\new",
        "+886912340003": "行一\n行二 'quoted' \\\\ end\\",
        "+886912340004": "測" * 900,  # 2,700 bytes: a GoIP device takes it
    }
    refused = {
        "+886912340005": ("x😀y", "goip_text_unsupported"),
        "+886912340006": ("測" * 1167, "goip_text_too_long"),  # 3,501 bytes
    }
    ids = {}
    for number, text in carried.items():
        ids[number] = (await send(http, base, {"to": [number], "text": text}))["id"]
    for number, (text, _) in refused.items():
        ids[number] = (await send(http, base, {"to": [number], "text": text}))["id"]
    # "0" is empty to the SMS Server's PHP: refused up front.
    problem = await send(http, base, {"to": ["+886912340007"], "text": "0"}, status=422)
    assert "text" in problem["detail"] and '"0"' in problem["detail"]

    for message_id in ids.values():
        await wait_states(http, base, message_id, FINAL, within=10)
    stored = {row["number"]: row for row in await tasks(http, sim, "hq")}
    for number, text in carried.items():
        (recipient,) = (await message(http, base, ids[number]))["recipients"]
        assert recipient["state"] in SENT, recipient
        # What the simulated device sends is what the server's SQL stored.
        assert stored[number]["content"] == text
    for number, (_, code) in refused.items():
        (recipient,) = (await message(http, base, ids[number]))["recipients"]
        assert (recipient["state"], recipient["error"]["code"]) == ("failed", code)
        assert number not in stored  # no task was created for it
    await one_task_each(http, sim, ["hq"], list(carried))


async def test_a_slow_engine_gets_one_task_per_recipient_and_holds_up_no_other_server(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _, base = await start(
        simulator,
        daemon_factory,
        http,
        tmp_path,
        {"hq": [{"line_id": "G101"}, {"line_id": "G102"}], "branch": [{"line_id": "G201"}]},
        send_timeout="4s",
    )
    # hq's engine answers every sendsms after 2 s, within goipd's send timeout.
    await control(http, sim, "PATCH", "servers/hq", {"engine": "slow", "engine_delay": 2.0})
    numbers = [f"+8869123450{index:02d}" for index in range(12)]
    started = time.monotonic()
    ids = [(await send(http, base, {"to": [n], "text": f"slow {n}"}))["id"] for n in numbers]

    async def branch_sent_while_hq_is_slow() -> bool:
        branch = [
            r
            for message_id in ids
            for r in (await message(http, base, message_id))["recipients"]
            if r["server"] == "branch" and r["state"] in SENT
        ]
        return len(branch) >= 4

    await eventually(branch_sent_while_hq_is_slow, 1.8, "branch sending while hq's engine stalls")
    # Before hq's first answer: at most max_sends_in_flight (4) of goipd's sends are open there.
    assert 1 <= len(await tasks(http, sim, "hq")) <= 4
    assert time.monotonic() - started < 2.0
    for message_id in ids:
        await wait_states(http, base, message_id, SENT, within=20)
    await one_task_each(http, sim, ["hq", "branch"], numbers)
    text = await metrics(http, base)
    assert (sample(text, "goipd_dispatch_ambiguous_total") or 0) == 0


async def test_an_engine_slower_than_the_send_timeout_has_its_task_adopted(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _, base = await start(
        simulator, daemon_factory, http, tmp_path, {"hq": [{"line_id": "G101"}]}
    )
    first = await send(http, base, {"to": ["+886912346000"], "text": "engine healthy"})
    await wait_states(http, base, first["id"], SENT)
    # ACCEPT after 1.5 s, goipd gives up after 1 s: the server stored the task all the same.
    await control(http, sim, "PATCH", "servers/hq", {"engine": "slow", "engine_delay": 1.5})
    numbers = ["+886912346001", "+886912346002"]
    reply = await send(http, base, {"to": numbers, "text": "answer lost"})
    await wait_states(http, base, reply["id"], SENT, within=20)
    await one_task_each(http, sim, ["hq"], numbers)
    text = await metrics(http, base)
    assert sample(text, "goipd_send_verifications_total", server="hq", result="adopted") == 2.0
    assert (sample(text, "goipd_dispatch_ambiguous_total") or 0) == 0


async def test_a_server_without_php_mbstring_works_and_says_so(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _, base = await start(
        simulator,
        daemon_factory,
        http,
        tmp_path,
        {"hq": [{"line_id": "G101"}, {"line_id": "G102"}]},
    )
    await control(http, sim, "PATCH", "servers/hq", {"mbstring": False})
    numbers = [f"+8869123470{index:02d}" for index in range(6)]
    ids = [(await send(http, base, {"to": [n], "text": "沒有 mbstring"}))["id"] for n in numbers]
    for message_id in ids:
        await wait_states(http, base, message_id, SENT)
    await one_task_each(http, sim, ["hq"], numbers)
    async with http.get(f"{base}/api/v1/lines") as resp:
        (server,) = (await resp.json())["servers"]
    (problem,) = server["setup_problems"]
    assert problem["problem"] == "php_mbstring_missing" and "php-mbstring" in problem["fix"]
    text = await metrics(http, base)
    assert (
        sample(text, "goipd_server_setup_problem", server="hq", problem="php_mbstring_missing")
        == 1.0
    )
    assert (sample(text, "goipd_dispatch_ambiguous_total") or 0) == 0


async def test_sends_held_by_a_dead_engine_go_out_once_it_restarts(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _, base = await start(
        simulator, daemon_factory, http, tmp_path, {"hq": [{"line_id": "G101"}]}
    )
    await control(
        http,
        sim,
        "PATCH",
        "servers/hq",
        {"engine": "dead", "engine_delay": 0.3, "keepalive_after": 0.5},
    )
    numbers = [f"+8869123480{index:02d}" for index in range(4)]
    ids = [(await send(http, base, {"to": [n], "text": f"held {n}"}))["id"] for n in numbers]
    for message_id in ids:
        await wait_states(http, base, message_id, {"submitted"})
    assert all(row["state"] == "unsend" for row in await tasks(http, sim, "hq"))
    # The engine comes back: the lines read offline until their next keepalive, then
    # everything still queued on the server goes out, once.
    await control(http, sim, "PATCH", "servers/hq", {"engine": "running"})
    for message_id in ids:
        await wait_states(http, base, message_id, SENT, within=15)
    await one_task_each(http, sim, ["hq"], numbers)
    sent = Counter(row["number"] for row in await control(http, sim, "GET", "servers/hq/sent"))
    assert {n: sent[n] for n in numbers} == dict.fromkeys(numbers, 1)


async def test_a_bad_query_is_a_database_fault_not_an_ambiguous_send(
    simulator: Simulator, daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A server set up as if it escaped texts itself, which v1.28.4 does not.
    sim, _, base = await start(
        simulator, daemon_factory, http, tmp_path, {"hq": [{"line_id": "G101"}]}, escape_text=False
    )
    reply = await send(http, base, {"to": ["+886912349001"], "text": "don't stop"})

    async def refused() -> bool:
        (recipient,) = (await message(http, base, reply["id"]))["recipients"]
        return (recipient["error"] or {}).get("code") == "upstream_server_database"

    await eventually(refused, 10, "the Bad query answer recorded")
    (recipient,) = (await message(http, base, reply["id"]))["recipients"]
    assert "Bad query" in recipient["error"]["meaning"]
    assert "don't" not in recipient["error"]["meaning"]  # the echoed SQL is never kept
    assert await tasks(http, sim, "hq") == []
    text = await metrics(http, base)
    assert (sample(text, "goipd_dispatch_ambiguous_total") or 0) == 0
    assert (sample(text, "goipd_send_verifications_total", server="hq", result="adopted")) in (
        None,
        0.0,
    )
