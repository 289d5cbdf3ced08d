"""The GoIP SMS Server simulator answers as the vendor document says, over real loopback HTTP.

Every other end-to-end test trusts this fake, so it is held to the document here: reply shapes
and quirks, sendsms decisions and round robin, pushes and receipts, querysms states, faults, the
control API, churn and scale.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from goipd.sim.goip import (
    RunningSimulator,
    SimFleet,
    SimLine,
    demo_spec,
    start_simulator,
    synthetic_spec,
)
from tests.helpers.daemons import fleet_spec
from tests.helpers.simulator import control, until

Start = Callable[..., Awaitable[RunningSimulator]]


def spec(*lines: dict[str, Any], **server: Any) -> dict[str, Any]:
    """A server answering the way the vendor's document shows (profile `document`); the
    v1.28.4 profile, the default, is tested in test_goip_v1284.py."""
    return {
        "servers": [
            {
                "name": "hq",
                "profile": "document",
                "username": "root",
                "password": "pw",
                "lines": list(lines) or [{"line_id": "G101"}],
                "send_delay": 0.01,
                "receipt_delay": 0.01,
                **server,
            }
        ]
    }


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    running: list[RunningSimulator] = []

    async def go(fleet_spec: dict[str, Any], **fleet_kw: Any) -> RunningSimulator:
        fleet = SimFleet.from_spec(fleet_spec)
        for key, value in fleet_kw.items():
            setattr(fleet, key, value)
        sim = await start_simulator(fleet)
        running.append(sim)
        return sim

    yield go
    for sim in running:
        await sim.stop()


@dataclass
class Receiver:
    """A push target: records every JSON body; answers with the queued statuses, then 200."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hits: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        rec.hits += 1
        if rec.statuses:
            return web.Response(status=rec.statuses.pop(0))
        rec.bodies.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


async def post(
    sim: RunningSimulator,
    api: str,
    body: dict[str, Any],
    *,
    server: str = "hq",
    auth: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, str, str]:
    payload = {"auth": auth or {"username": "root", "password": "pw"}, **body}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(
            f"{sim.base_url(server)}/goip/{api}/",
            data=raw if raw is not None else json.dumps(payload).encode(),
        ) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


def lenient(text: str) -> Any:
    """What goipd's parser must do anyway: drop the vendor's trailing comma before ']'."""
    return json.loads(re.sub(r",\s*]", "]", text))


async def api(sim: RunningSimulator, name: str, body: dict[str, Any], **kw: Any) -> Any:
    status, _, text = await post(sim, name, body, **kw)
    assert status == 200, text
    return lenient(text)


async def send(sim: RunningSimulator, number: str, **body: Any) -> dict[str, str]:
    reply: dict[str, str] = await api(sim, "sendsms", {"number": number, "content": "hi", **body})
    return reply


def lines_of(sim: RunningSimulator, task: str) -> list[str | None]:
    return [sub.goip_line for sub in sim.fleet.servers["hq"].tasks[task]]


# --- transport, auth, shapes -------------------------------------------------------------------


async def test_auth_is_required_on_every_api(start: Start) -> None:
    sim = await start(spec())
    for name in ("sendsms", "querysms", "querylines"):
        assert (await post(sim, name, {}, auth={"username": "root", "password": "no"}))[0] == 401
        assert (await post(sim, name, {}, auth={"username": "admin", "password": "pw"}))[0] == 401
        assert (await post(sim, name, {}, raw=b'{"number": "1"}'))[0] == 401
    assert (await post(sim, "querylines", {}, raw=b"{not json"))[0] == 400
    assert (await post(sim, "querylines", {}, raw=b""))[0] == 400


async def test_trailing_slash_is_mandatory_and_unknown_paths_404(start: Start) -> None:
    sim = await start(spec())
    body = {"auth": {"username": "root", "password": "pw"}}
    async with aiohttp.ClientSession() as http:
        for path in ("/hq/goip/querylines", "/nope/goip/querylines/", "/hq/goip/other/"):
            async with http.post(f"{sim.url}{path}", json=body) as resp:
                assert resp.status == 404, path
        async with http.post(f"{sim.url}/hq/goip/querylines/", json=body) as resp:
            assert resp.status == 200


async def test_querylines_shape_with_quirks(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "G101", "reg": "LOGOUT"},
            {"line_id": "G102", "remain_sms": 856, "day_remain_sms": 56},
            {"line_id": "G103", "reg": ""},
            {"line_id": "G104", "online": False, "reg": ""},
        )
    )
    status, content_type, text = await post(sim, "querylines", {})
    assert (status, content_type) == (200, "text/html")
    assert text.startswith("[\n") and text.endswith("},\n]")  # as the doc's own example
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert lenient(text) == [
        {
            "goip_line": "G101",
            "online": "1",
            "reg": "LOGOUT",
            "remain_sms": "-1",
            "day_remain_sms": "-1",
        },
        {
            "goip_line": "G102",
            "online": "1",
            "reg": "LOGIN",
            "remain_sms": "856",
            "day_remain_sms": "56",
        },
        {"goip_line": "G103", "online": "1", "reg": "", "remain_sms": "-1", "day_remain_sms": "-1"},
        {"goip_line": "G104", "online": "0", "reg": "", "remain_sms": "-1", "day_remain_sms": "-1"},
    ]


async def test_quirks_off_gives_clean_json(start: Start) -> None:
    sim = await start(spec(quirks=False))
    status, content_type, text = await post(sim, "querylines", {})
    assert (status, content_type) == (200, "application/json")
    assert json.loads(text)[0]["goip_line"] == "G101"
    status, content_type, text = await post(sim, "querysms", {"taskID": "1"})
    assert (content_type, json.loads(text)) == ("application/json", [])


# --- sendsms -----------------------------------------------------------------------------------


async def test_sendsms_accepts_with_increasing_task_ids(start: Start) -> None:
    sim = await start(spec())
    first = await send(sim, "13600000000")
    second = await send(sim, "13600000001")
    assert first["result"] == second["result"] == "ACCEPT"
    assert set(first) == {"result", "taskID"}
    assert int(second["taskID"]) > int(first["taskID"])


async def test_sendsms_reject_reasons(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "G1", "provider": "移动"},
            {"line_id": "G2", "provider": "联通", "reg": "LOGOUT"},
            {"line_id": "G3", "provider": "联通", "online": False},
            {"line_id": "G4", "provider": "电信", "day_remain_sms": 0},
        )
    )

    def reject(reason: str) -> dict[str, str]:
        return {"result": "REJECT", "reason": reason}

    assert await api(sim, "sendsms", {"number": "1"}) == reject("unknown")
    assert await api(sim, "sendsms", {"content": "x"}) == reject("unknown")
    assert await api(sim, "sendsms", {"number": " , ", "content": "x"}) == reject("unknown")
    too_many = ",".join(str(13600000000 + i) for i in range(10_000))
    assert await send(sim, too_many) == reject("unknown")
    assert await send(sim, "1", provider="网通") == reject("none_provider")
    assert await send(sim, "1", provider="联通") == reject("none_line")  # group exists, all sick
    assert await send(sim, "1", provider="电信") == reject("none_line")  # day quota used up
    assert await send(sim, "1", goip_line="G9") == reject("none_line")  # no such line
    assert await send(sim, "1", goip_line="G2") == reject("none_line")  # not registered
    assert (await send(sim, "1", provider="移动"))["result"] == "ACCEPT"
    sim.fleet.servers["hq"].set_line("G1", online=False)
    assert await send(sim, "1") == reject("none_line")


async def test_round_robin_puts_a_line_that_sent_at_the_back(start: Start) -> None:
    sim = await start(
        spec({"line_id": "G1"}, {"line_id": "G2", "reg": "LOGOUT"}, {"line_id": "G3"})
    )
    task = (await send(sim, "1,2,3"))["taskID"]
    assert lines_of(sim, task) == ["G1", "G3", "G1"]  # G2 unusable: skipped, keeps its place
    sim.fleet.servers["hq"].set_line("G2", reg="LOGIN")
    task = (await send(sim, "4,5,6"))["taskID"]
    assert lines_of(sim, task) == ["G2", "G3", "G1"]


async def test_provider_group_and_goip_line_wins(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "G1", "provider": "cht"},
            {"line_id": "G2", "provider": "fet"},
            {"line_id": "G3", "provider": "cht"},
        )
    )
    task = (await send(sim, "1,2,3", provider="cht"))["taskID"]
    assert lines_of(sim, task) == ["G1", "G3", "G1"]
    task = (await send(sim, "4,5", provider="cht", goip_line="G2"))["taskID"]
    assert lines_of(sim, task) == ["G2", "G2"]
    # goip_line wins even when provider names no group at all.
    assert (await send(sim, "6", provider="nope", goip_line="G2"))["result"] == "ACCEPT"


async def test_repeated_numbers_are_merged(start: Start) -> None:
    sim = await start(spec())
    task = (await send(sim, "13600000000, 13611111111,13600000000,,13611111111"))["taskID"]
    server = sim.fleet.servers["hq"]
    assert [sub.number for sub in server.tasks[task]] == ["13600000000", "13611111111"]
    await until(lambda: len(server.sent) == 2)
    await asyncio.sleep(0.05)
    assert len(server.sent) == 2


# --- reports -----------------------------------------------------------------------------------


async def test_reports_pushed_with_err_code_and_receipts(start: Start, receiver: Receiver) -> None:
    sim = await start(
        spec(
            {"line_id": "G101", "fail_code": "350"},
            {"line_id": "G102"},
            {"line_id": "G103", "receipt": False},
            status_push_url=receiver.url,
        )
    )
    task = (await send(sim, "13600000000,13600000001,13600000002"))["taskID"]
    await until(lambda: len(receiver.bodies) == 4)
    await asyncio.sleep(0.05)  # nothing more may follow
    by_key = sorted(receiver.bodies, key=lambda body: (body["taskID"], "receipt" in body))
    assert by_key == [
        {"taskID": f"{task}.13600000000", "goip_line": "G101", "send": "failed", "err_code": "350"},
        {"taskID": f"{task}.13600000001", "goip_line": "G102", "send": "succeeded"},
        {
            "taskID": f"{task}.13600000001",
            "goip_line": "G102",
            "send": "succeeded",
            "receipt": "1",
        },
        {"taskID": f"{task}.13600000002", "goip_line": "G103", "send": "succeeded"},
    ]
    # The receipt report follows its send report, never the other way round.
    g102 = [body for body in receiver.bodies if body["goip_line"] == "G102"]
    assert "receipt" not in g102[0] and g102[1]["receipt"] == "1"
    sent = sim.fleet.servers["hq"].sent
    assert {(s["number"], s["goip_line"], s["result"], s["err_code"]) for s in sent} == {
        ("13600000000", "G101", "failed", "350"),
        ("13600000001", "G102", "succeeded", None),
        ("13600000002", "G103", "succeeded", None),
    }


async def test_push_is_retried_then_dropped(start: Start, receiver: Receiver) -> None:
    sim = await start(spec(status_push_url=receiver.url), push_backoff=0.01)
    receiver.statuses = [500, 503]
    await send(sim, "1")
    await until(lambda: len(receiver.bodies) == 2)  # send report (third try) and receipt
    assert receiver.hits == 4

    receiver.statuses = [500] * 10
    hits = receiver.hits
    result = await control(
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G101", "from_number": "10086", "content": "x"},
    )
    assert result["push"] == "no_url"
    sim.fleet.servers["hq"].set_push(inbound_url=receiver.url)
    result = await control(
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G101", "from_number": "10086", "content": "x"},
    )
    assert result["push"] == "http_500"
    assert receiver.hits - hits == sim.fleet.push_attempts


async def test_push_to_a_dead_target_is_dropped(start: Start) -> None:
    sim = await start(
        spec(inbound_push_url="http://127.0.0.1:9/inbound?token=secret"), push_backoff=0.01
    )
    result = await sim.fleet.servers["hq"].push_inbound("G101", "10086", "x")
    assert result["push"].startswith("error:")


async def test_quota_decrements_and_exhausted_line_is_skipped(start: Start) -> None:
    sim = await start(
        spec({"line_id": "G1", "remain_sms": 2, "day_remain_sms": 1}, {"line_id": "G2"})
    )
    server = sim.fleet.servers["hq"]
    task = (await send(sim, "1", goip_line="G1"))["taskID"]
    await until(lambda: server.tasks[task][0].send == "succeeded")
    assert (server.lines["G1"].remain_sms, server.lines["G1"].day_remain_sms) == (1, 0)
    assert (server.lines["G2"].remain_sms, server.lines["G2"].day_remain_sms) == (-1, -1)
    lines = {line["goip_line"]: line for line in await api(sim, "querylines", {})}
    assert (lines["G1"]["remain_sms"], lines["G1"]["day_remain_sms"]) == ("1", "0")
    task = (await send(sim, "2,3,4"))["taskID"]
    assert lines_of(sim, task) == ["G2", "G2", "G2"]
    assert (await send(sim, "5", goip_line="G1"))["reason"] == "none_line"


async def test_quota_is_reserved_within_a_request(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "G1", "provider": "a", "day_remain_sms": 1},
            {"line_id": "G2", "provider": "a"},
            {"line_id": "G3", "provider": "b"},
        )
    )
    task = (await send(sim, "1,2,3", provider="a"))["taskID"]
    assert lines_of(sim, task) == ["G1", "G2", "G2"]  # G1 had room for one only
    task = (await send(sim, "5,6", goip_line="G3"))["taskID"]
    server = sim.fleet.servers["hq"]
    server.set_line("G3", remain_sms=1)  # shrinks while queued: one send left in it
    await until(lambda: all(sub.send not in ("unsend", "sending") for sub in server.tasks[task]))
    assert [(sub.send, sub.err_code) for sub in server.tasks[task]] == [
        ("succeeded", None),
        ("failed", "331"),
    ]


async def test_querysms_states_by_task_and_sub_task(start: Start) -> None:
    sim = await start(spec({"line_id": "G101"}, send_delay=0.3))
    task = (await send(sim, "13600000000,13600000001", goip_line="G101"))["taskID"]
    reports = await api(sim, "querysms", {"taskID": task})
    # One line sends one SMS at a time: the second recipient waits its turn.
    assert reports == [
        {"taskID": f"{task}.13600000000", "goip_line": "G101", "send": "sending"},
        {"taskID": f"{task}.13600000001", "goip_line": "null", "send": "unsend"},
    ]
    one = await api(sim, "querysms", {"taskID": f"{task}.13600000001"})
    assert one == [reports[1]]  # a sub-task query still answers with an array
    server = sim.fleet.servers["hq"]
    await until(lambda: all(sub.receipt for sub in server.tasks[task]))
    assert await api(sim, "querysms", {"taskID": int(task)}) == [
        {
            "taskID": f"{task}.{number}",
            "goip_line": "G101",
            "send": "succeeded",
            "receipt": "1",
        }
        for number in ("13600000000", "13600000001")
    ]
    assert await api(sim, "querysms", {"taskID": "999999"}) == []
    assert await api(sim, "querysms", {"taskID": f"{task}.13699999999"}) == []
    assert await api(sim, "querysms", {}) == []
    status, content_type, text = await post(sim, "querysms", {"taskID": "999999"})
    assert (content_type, lenient(text)) == ("text/html", [])


async def test_drop_reports_silences_pushes_not_querysms(start: Start, receiver: Receiver) -> None:
    sim = await start(spec(status_push_url=receiver.url))
    await control(sim, "PUT", "servers/hq/push", {"drop_reports": True})
    task = (await send(sim, "1,2"))["taskID"]
    server = sim.fleet.servers["hq"]
    await until(lambda: all(sub.receipt for sub in server.tasks[task]))
    await asyncio.sleep(0.05)
    assert receiver.hits == 0
    assert [r["send"] for r in await api(sim, "querysms", {"taskID": task})] == ["succeeded"] * 2
    await control(sim, "PUT", "servers/hq/push", {"drop_reports": False})
    await send(sim, "3")
    await until(lambda: len(receiver.bodies) == 2)


async def test_inbound_push(start: Start, receiver: Receiver) -> None:
    sim = await start(spec(inbound_push_url=receiver.url))
    result = await control(
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G101", "from_number": "10086", "content": "尊敬的客户，您好【中国移动】"},
    )
    assert result["push"] == "ok"
    [body] = receiver.bodies
    assert set(body) == {"goip_line", "from_number", "content", "recv_time"}
    assert (body["goip_line"], body["from_number"]) == ("G101", "10086")
    assert body["content"] == "尊敬的客户，您好【中国移动】"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["recv_time"])
    # A line the server no longer has (renamed or deleted): its SMS are pushed with null.
    gone = await control(
        sim, "POST", "servers/hq/inbound", {"goip_line": "G999", "from_number": "1", "content": "x"}
    )
    assert gone["push"] == "ok" and gone["report"]["goip_line"] is None
    assert receiver.bodies[-1]["goip_line"] is None
    await control(sim, "POST", "servers/hq/inbound", {"goip_line": "G101"}, expect=400)


# --- faults ------------------------------------------------------------------------------------


async def test_fault_timeout_and_slow(start: Start) -> None:
    sim = await start(spec())
    await control(sim, "PUT", "servers/hq/fault", {"mode": "timeout", "delay": 0.5})
    with pytest.raises(TimeoutError):
        await post(sim, "querylines", {}, timeout=0.1)
    await control(sim, "PUT", "servers/hq/fault", {"mode": "slow", "delay": 0.1})
    began = time.monotonic()
    assert (await post(sim, "querylines", {}))[0] == 200
    assert time.monotonic() - began >= 0.1


async def test_fault_html_500_truncated_and_wrong_auth(start: Start) -> None:
    sim = await start(spec())
    server = sim.fleet.servers["hq"]
    server.set_fault("html")
    status, content_type, text = await post(sim, "querylines", {})
    assert (status, content_type) == (200, "text/html") and "<html>" in text
    with pytest.raises(json.JSONDecodeError):
        lenient(text)
    server.set_fault("http_500")
    assert (await post(sim, "querylines", {}))[0] == 500
    server.set_fault("truncated_json")
    status, _, text = await post(sim, "querylines", {})
    assert status == 200 and text
    with pytest.raises(json.JSONDecodeError):
        lenient(text)
    server.set_fault("wrong_auth")
    assert (await post(sim, "querylines", {}))[0] == 401
    server.set_fault("none")
    assert (await post(sim, "querylines", {}))[0] == 200


@pytest.mark.parametrize("mode", ["reset", "down"])
async def test_fault_reset_and_down_drop_the_connection(start: Start, mode: str) -> None:
    sim = await start(spec())
    await control(sim, "PUT", "servers/hq/fault", {"mode": mode})
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(sim, "querylines", {})
    # The control API is not subject to faults.
    assert (await control(sim, "GET", "servers/hq"))["fault"]["mode"] == mode


# --- control API -------------------------------------------------------------------------------


async def test_control_api_lines(start: Start) -> None:
    sim = await start(spec())
    assert await control(sim, "GET", "servers") == ["hq"]
    state = await control(sim, "GET", "servers/hq")
    assert state["lines"][0]["line_id"] == "G101" and "password" not in state
    line = await control(
        sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT", "remain_sms": 5, "fail_code": 1}
    )
    assert (line["reg"], line["remain_sms"], line["fail_code"], line["usable"]) == (
        "LOGOUT",
        5,
        "1",
        False,
    )
    assert (await api(sim, "querylines", {}))[0]["reg"] == "LOGOUT"
    for bad in ({"online": "yes"}, {"reg": "ON"}, {"remain_sms": -2}, {"colour": "red"}):
        await control(sim, "PATCH", "servers/hq/lines/G101", bad, expect=400)
    await control(sim, "PATCH", "servers/hq/lines/G999", {"online": False}, expect=404)
    await control(sim, "PATCH", "servers/nope/lines/G101", {"online": False}, expect=404)
    added = await control(
        sim, "POST", "servers/hq/lines", {"line_id": "G102", "provider": "cht"}, expect=201
    )
    assert added["provider"] == "cht" and added["usable"]
    await control(sim, "POST", "servers/hq/lines", {"line_id": "G102"}, expect=409)
    await control(sim, "POST", "servers/hq/lines", {"provider": "x"}, expect=400)
    assert [x["goip_line"] for x in await api(sim, "querylines", {})] == ["G101", "G102"]
    await control(sim, "DELETE", "servers/hq/lines/G101")
    await control(sim, "DELETE", "servers/hq/lines/G101", expect=404)
    assert [x["goip_line"] for x in await api(sim, "querylines", {})] == ["G102"]
    await control(sim, "GET", "servers/nope", expect=404)


async def test_control_api_servers_fault_push_and_sent(start: Start, receiver: Receiver) -> None:
    sim = await start(spec())
    await control(
        sim,
        "POST",
        "servers",
        {
            "name": "branch",
            "password": "b",
            "lines": [{"line_id": "G201"}],
            "quirks": False,
            "profile": "document",
        },
        expect=201,
    )
    await control(sim, "POST", "servers", {"name": "branch", "password": "b"}, expect=409)
    await control(sim, "POST", "servers", {"name": "_x", "password": "b"}, expect=400)
    await control(sim, "POST", "servers", {"name": "x", "password": "b", "typo": 1}, expect=400)
    assert await control(sim, "GET", "servers") == ["hq", "branch"]
    _, content_type, _ = await post(
        sim, "querylines", {}, server="branch", auth={"username": "root", "password": "b"}
    )
    assert content_type == "application/json"

    await control(sim, "PUT", "servers/hq/fault", {"mode": "melt"}, expect=400)
    fault = await control(sim, "PUT", "servers/hq/fault", {"mode": "timeout", "delay": 2})
    assert fault == {"mode": "timeout", "delay": 2.0}
    await control(sim, "PUT", "servers/hq/fault", {"mode": "none"})

    push = await control(sim, "PUT", "servers/hq/push", {"status_url": receiver.url})
    assert push == {"status_url": receiver.url, "inbound_url": None, "drop_reports": False}
    await control(sim, "PUT", "servers/hq/push", {"status_url": "ftp://x"}, expect=400)
    await control(sim, "PUT", "servers/hq/push", {"drop_reports": "yes"}, expect=400)

    task = (await send(sim, "1,2,1"))["taskID"]
    await until(lambda: len(sim.fleet.servers["hq"].sent) == 2)
    sent = await control(sim, "GET", "servers/hq/sent")
    assert [(s["task_id"], s["sub_task_id"], s["number"]) for s in sent] == [
        (task, f"{task}.1", "1"),
        (task, f"{task}.2", "2"),
    ]
    assert set(sent[0]) == {
        "task_id",
        "sub_task_id",
        "number",
        "content",
        "goip_line",
        "result",
        "err_code",
        "at",
    }
    assert sent[0]["content"] == "hi" and sent[0]["result"] == "succeeded"
    await control(sim, "DELETE", "servers/branch")
    await control(sim, "GET", "servers/branch/sent", expect=404)


async def test_in_process_api_mirrors_control(start: Start) -> None:
    sim = await start(spec())
    server = sim.fleet.servers["hq"]
    server.set_line("G101", reg="LOGOUT")
    server.add_line(SimLine("G102", remain_sms=3))
    assert [(x["goip_line"], x["reg"]) for x in await api(sim, "querylines", {})] == [
        ("G101", "LOGOUT"),
        ("G102", "LOGIN"),
    ]
    assert server.send_sms("1", "hi")["result"] == "ACCEPT"
    with pytest.raises(LookupError):
        server.set_line("G9", online=False)
    with pytest.raises(ValueError, match="reg"):
        server.set_line("G101", reg="MAYBE")


# --- churn, demo, scale, runner ----------------------------------------------------------------


def test_churn_is_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[dict[str, str] | None]:
        fleet = SimFleet.from_spec(synthetic_spec(5, 4), seed=seed)
        return [fleet.churn_step() for _ in range(30)]

    first = run(3)
    assert first == run(3) and first != run(4)
    assert {step["change"] for step in first if step} == {"online", "reg", "quota", "restore"}


async def test_churn_runs_in_the_background(start: Start) -> None:
    sim = await start(synthetic_spec(1, 2))
    before = json.dumps([x.state() for x in sim.fleet.servers["s0001"].lines.values()])
    await control(sim, "PUT", "churn", {"interval": 0.01})
    await until(
        lambda: before != json.dumps([x.state() for x in sim.fleet.servers["s0001"].lines.values()])
    )
    await control(sim, "PUT", "churn", {"interval": 0})


def test_demo_spec() -> None:
    demo = demo_spec("http://127.0.0.1:8080", seed=7)
    assert demo == demo_spec("http://127.0.0.1:8080", seed=7)
    servers = {s["name"]: s for s in demo["servers"]}
    assert {name: len(s["lines"]) for name, s in servers.items()} == {
        "taipei": 8,
        "kaohsiung": 16,
        "shenzhen": 32,
    }
    taipei = servers["taipei"]
    assert (taipei["username"], taipei["password"]) == ("root", "demo-taipei")
    assert taipei["lines"][0]["line_id"] == "G101" and servers["kaohsiung"]["lines"][0][
        "line_id"
    ] == ("G201")
    assert taipei["status_push_url"] == (
        "http://127.0.0.1:8080/hooks/goip/taipei/status?token=demo-hook-taipei"
    )
    assert taipei["inbound_push_url"].endswith("/hooks/goip/taipei/inbound?token=demo-hook-taipei")
    lines = [line for s in demo["servers"] for line in s["lines"]]
    assert sum(line.get("fail_code") == "331" for line in lines) == 1
    assert sum(line.get("day_remain_sms") == 0 for line in lines) >= 2
    assert any(line.get("online") is False for line in lines)
    assert any(line.get("reg") == "LOGOUT" for line in lines)
    assert any(line.get("reg") == "" and line.get("online", True) for line in lines)
    assert {line["provider"] for line in servers["shenzhen"]["lines"]} == {"移动", "联通"}
    assert "status_push_url" not in demo_spec(None)["servers"][0]
    SimFleet.from_spec(demo)  # valid as a spec


async def test_a_thousand_servers_on_one_port(start: Start) -> None:
    began = time.monotonic()
    sim = await start(synthetic_spec(1000, 32))
    name = f"s{random.randrange(1, 1001):04d}"
    lines = await api(
        sim, "querylines", {}, server=name, auth={"username": "root", "password": f"pw-{name}"}
    )
    assert [x["goip_line"] for x in lines] == [f"G{101 + i}" for i in range(32)]
    assert time.monotonic() - began < 5


async def test_start_simulator_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await start_simulator(SimFleet(), host="0.0.0.0")


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
    document = fleet_spec(
        hq=[
            {"line_id": "G1", "provider": "cht"},
            {"line_id": "G2", "provider": "cht"},
            {"line_id": "G3", "provider": "fet", "day_remain_sms": 1},
        ]
    )
    document["servers"][0]["profile"] = "document"  # quota-aware accept, as the document says
    sim = await simulator(document)
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
