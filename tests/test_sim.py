"""The GoIP simulator behaves as the vendor document says (it is the fake every other test
trusts, so it gets tested too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from goipd.sim.goip import RunningSimulator, synthetic_spec
from goipd.sim.runner import main_simulate
from tests.conftest import fleet_spec

Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]


async def call(
    sim: RunningSimulator, server: str, api: str, body: dict[str, Any], password: str | None = None
) -> tuple[int, str, Any]:
    auth = {"username": "root", "password": password or f"pw-{server}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url(server)}/goip/{api}/", json={"auth": auth, **body}) as resp,
    ):
        text = await resp.text()
        try:
            data = json.loads(text.replace(",\n]", "\n]"))
        except json.JSONDecodeError:
            data = None
        return resp.status, resp.content_type, data


async def test_auth_quirks_and_trailing_slash(simulator: Start) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101", "remain_sms": 856}]))
    status, content_type, lines = await call(sim, "hq", "querylines", {})
    assert (status, content_type) == (200, "text/html")
    assert lines == [
        {
            "goip_line": "G101",
            "online": "1",
            "reg": "LOGIN",
            "remain_sms": "856",
            "day_remain_sms": "-1",
        }
    ]
    assert (await call(sim, "hq", "querylines", {}, password="wrong"))[0] == 401
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url('hq')}/goip/querylines", json={}) as resp,
    ):
        assert resp.status == 404  # the trailing slash is mandatory


async def test_sendsms_round_robin_rejects_and_quota(simulator: Start) -> None:
    sim = await simulator(
        fleet_spec(
            hq=[
                {"line_id": "G1", "provider": "cht"},
                {"line_id": "G2", "provider": "cht"},
                {"line_id": "G3", "provider": "fet", "day_remain_sms": 1},
            ]
        )
    )
    fleet = sim.fleet.servers["hq"]
    fleet.send_delay = 0.0
    _, _, reply = await call(
        sim, "hq", "sendsms", {"number": "1,2,3,1", "content": "x", "provider": "cht"}
    )
    task = fleet.tasks[reply["taskID"]]
    assert [sub.number for sub in task] == ["1", "2", "3"]  # repeats merged
    assert [sub.goip_line for sub in task] == ["G1", "G2", "G1"]  # round robin in the group
    assert (await call(sim, "hq", "sendsms", {"number": "1", "content": "x", "provider": "nope"}))[
        2
    ] == {"result": "REJECT", "reason": "none_provider"}
    assert (await call(sim, "hq", "sendsms", {"number": "1", "content": "x", "goip_line": "G9"}))[
        2
    ]["reason"] == "none_line"
    assert (await call(sim, "hq", "sendsms", {"number": "1"}))[2]["reason"] == "unknown"
    # goip_line wins over provider; the day quota is used up by the send.
    _, _, reply = await call(
        sim, "hq", "sendsms", {"number": "5", "content": "x", "goip_line": "G3", "provider": "cht"}
    )
    assert reply["result"] == "ACCEPT"
    await asyncio.sleep(0.05)
    assert fleet.lines["G3"].day_remain_sms == 0
    assert (await call(sim, "hq", "sendsms", {"number": "6", "content": "x", "goip_line": "G3"}))[
        2
    ]["reason"] == "none_line"
    _, _, reports = await call(sim, "hq", "querysms", {"taskID": f"{reply['taskID']}.5"})
    assert reports[0]["send"] == "succeeded" and reports[0]["goip_line"] == "G3"
    _, _, empty = await call(sim, "hq", "querysms", {"taskID": "424242"})
    assert empty == []


async def test_many_servers_on_one_port(simulator: Start) -> None:
    sim = await simulator(synthetic_spec(1000, 32))
    status, _, lines = await call(sim, "s0777", "querylines", {}, password="pw-s0777")
    assert status == 200 and len(lines) == 32


def test_runner_refuses_non_loopback_hosts() -> None:
    assert main_simulate(["--host", "0.0.0.0", "--demo"]) == 2
    assert main_simulate(["--host", "192.0.2.1", "--demo"]) == 2
