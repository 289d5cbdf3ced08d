"""The smsgo simulator: delivery report and reply pushes with their retries, validation and text
forms as the document gives them, its control API, with and without quirks, loopback only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from goipd.model import State
from goipd.sim.smsgo import RunningSmsgoSim, start_smsgo_sim
from goipd.upstream.cloud import CloudStatus, Verdict
from goipd.upstream.smsgo import (
    STATUS_WORDS,
    SmsgoProvider,
    parse_balance,
    parse_cancel,
    parse_reply,
    parse_report,
    parse_send_reply,
)
from tests.helpers.cloud import serve_routes
from tests.helpers.smsgo import PASSWORD, TOKEN, Receiver, make_provider


@pytest.fixture
async def sim() -> AsyncIterator[RunningSmsgoSim]:
    running = await start_smsgo_sim(password=PASSWORD, dlr_delay=0.02, dlr_retry_delay=0.02)
    yield running
    await running.close()


@pytest.fixture
async def provider(sim: RunningSmsgoSim) -> AsyncIterator[SmsgoProvider]:
    client = make_provider(sim)
    yield client
    await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with serve_routes(
        web.get("/hooks/smsgo/report", recv.report), web.get("/hooks/smsgo/reply", recv.reply)
    ) as base:
        recv.url = base
        yield recv


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_delivery_report_push(sim: RunningSmsgoSim, receiver: Receiver) -> None:
    sim.sim.set_dlr(status={"+886912000002": "EXPIRED"})
    report_url = f"{receiver.url}/hooks/smsgo/report?token={TOKEN}"
    client = make_provider(sim, report_url=report_url)
    try:
        results = await client.send(["+886912000001", "+886912000002"], "hi")
    finally:
        await client.close()
    msgid = results[0].upstream_id or ""
    await eventually(lambda: len(sim.sim.dlr_log) == 2)
    assert {e["outcome"] for e in sim.sim.dlr_log} == {"ok"}
    assert {r["token"] for r in receiver.reports} == {TOKEN}  # the hook's own query survives
    statuses = {
        parse_report({k: v for k, v in r.items() if k != "token"}) for r in receiver.reports
    }
    assert statuses == {
        CloudStatus(msgid, "+886912000001", State.DELIVERED, "DELIVRD", STATUS_WORDS["DELIVRD"][1]),
        CloudStatus(msgid, "+886912000002", State.FAILED, "EXPIRED", STATUS_WORDS["EXPIRED"][1]),
    }


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("wrong_body", "wrong_body"),
        ("wrong_type", "wrong_content_type"),
        ("status_500", "http_500"),
    ],
)
async def test_delivery_report_retried_three_times(
    sim: RunningSmsgoSim, receiver: Receiver, mode: str, outcome: str
) -> None:
    receiver.mode = mode
    client = make_provider(sim, report_url=f"{receiver.url}/hooks/smsgo/report?token={TOKEN}")
    try:
        await client.send(["+886912345678"], "hi")
    finally:
        await client.close()
    await eventually(lambda: sim.sim.counters["dlr_dropped"] == 1)
    assert [(e["attempt"], e["outcome"]) for e in sim.sim.dlr_log] == [
        (n, outcome) for n in (1, 2, 3, 4)
    ]
    assert len(receiver.reports) == 4


async def test_delivery_report_to_a_dead_url(sim: RunningSmsgoSim) -> None:
    client = make_provider(sim, report_url="http://127.0.0.1:1/hooks/smsgo/report?token=x")
    try:
        await client.send(["+886912345678"], "hi")
    finally:
        await client.close()
    await eventually(lambda: sim.sim.counters["dlr_dropped"] == 1)
    assert all(e["outcome"].startswith("error:") for e in sim.sim.dlr_log)


async def test_reply_push(sim: RunningSmsgoSim, receiver: Receiver) -> None:
    client = make_provider(sim, reply_url=f"{receiver.url}/hooks/smsgo/reply?token={TOKEN}")
    try:
        results = await client.send(["+886912345678", "+886912345679"], "Reply YES or NO")
    finally:
        await client.close()
    msgid = results[0].upstream_id or ""
    entry = await sim.sim.inject_reply(msgid, "好的 YES", srcaddr="+886912345679")
    assert entry["outcome"] == "ok"
    # The same through the control API.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.control_url}/replies", json={"msgid": msgid, "smbody": "NO"}) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["outcome"] == "ok"
    assert [r["token"] for r in receiver.replies] == [TOKEN, TOKEN]
    first, second = (
        parse_reply({k: v for k, v in r.items() if k != "token"}) for r in receiver.replies
    )
    assert (first.from_number, first.to_number, first.text) == (
        "+886912345679",
        "+886911000111",
        "好的 YES",
    )
    assert (second.from_number, second.text) == ("+886912345678", "NO")
    assert receiver.replies[0]["msgid"] == msgid and receiver.replies[0]["encoding"] == "UCS2"
    assert time.strptime(first.upstream_time, "%Y/%m/%d %H:%M:%S")


async def test_control_api(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, f"{sim.control_url}{path}", json=body) as resp:
                return resp.status, await resp.json()

        status, faults = await call("PUT", "/fault", {"mode": "down", "side": "primary"})
        assert status == 200 and faults["primary"]["mode"] == "down"
        [result] = await provider.send(["+886912345678"], "hi")
        assert result.verdict is Verdict.ACCEPTED
        assert (await call("PUT", "/fault", {"mode": "none"}))[0] == 200
        assert (await call("PUT", "/fault", {"mode": "melt"}))[0] == 400
        assert (await call("PUT", "/fault", {"mode": "none", "colour": "red"}))[0] == 400
        assert (await call("PUT", "/account", {"points": 5}))[1]["points"] == 5
        assert (await call("PUT", "/account", {"points": "many"}))[0] == 400
        assert (await call("PUT", "/dlr", {"default": "UNDELIV", "delay": 0}))[1][
            "default"
        ] == "UNDELIV"
        assert (await call("PUT", "/dlr", {"default": "GONE"}))[0] == 400
        status, sends = await call("GET", "/sends")
        assert status == 200 and sends[-1]["msgid"] == result.upstream_id
        status, message = await call("GET", f"/messages/{result.upstream_id}")
        assert status == 200 and message["numbers"] == ["0912345678"]
        assert (await call("GET", "/messages/1"))[0] == 404
        status, requests = await call("GET", "/requests")
        assert all("password" not in r["params"] for r in requests)
        # This send went without a replyurl: nobody can answer it.
        status, error = await call("POST", "/replies", {"msgid": result.upstream_id, "smbody": "x"})
        assert status == 400 and "replyurl" in error["error"]
        assert (await call("GET", "/state"))[1]["points"] == 5
        # The same API answers on the primary's port.
        async with http.get(sim.url.replace("/sms_gw", "/_control/state")) as resp:
            assert resp.status == 200


async def get_text(url: str, query: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}?{query}") as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (f"username=goipd&password={PASSWORD}&dstaddr=0912345678&encoding=ASCII", -1),
        # One transcription's `smbdy`: the service sees no body.
        (f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbdy=Smtest", -1),
        ("username=goipd&password=nope&dstaddr=0912345678&smbody=x", -2),
        (f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbody=x&encoding=UTF8", -7),
        (
            f"username=goipd&password={PASSWORD}&dstaddr=%2B8613681912700&smbody=x&encoding=LUCS2",
            -7,
        ),
        (f"username=goipd&password={PASSWORD}&dstaddr=&smbody=x", -9),
        (
            f"username=goipd&password={PASSWORD}&dstaddr="
            + ",".join(["0912345678"] * 51)
            + "&smbody=x",
            -9,
        ),
        # A `+` left unencoded decodes as a space: an illegal B number.
        (f"username=goipd&password={PASSWORD}&dstaddr=+8613681912700&smbody=x", -5),
        (f"username=goipd&password={PASSWORD}&dstaddr=912345678&smbody=x", -5),
        (f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbody=x&dlvtime=2024-05-01", -1),
        (
            f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbody=x&replyurl=" + "u" * 301,
            -1,
        ),
        (f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbody=x&replydays=31", -1),
    ],
)
async def test_simulator_validates_like_the_service(
    sim: RunningSmsgoSim, query: str, code: int
) -> None:
    reply = parse_send_reply(await get_text(f"{sim.url}/sendsms.aspx", query))
    assert reply.statuscode == code and reply.msgid is None
    assert not sim.sim.messages


async def test_simulator_text_forms_match_the_document(sim: RunningSmsgoSim) -> None:
    # The ASCII example request, with smbody (docs/cloud-providers.md#smsgo-document-rulings) and a real number.
    query = (
        f"username=goipd&password={PASSWORD}&dstaddr=0912345678&encoding=ASCII&smbody=Smtest"
        "&response=http%3A%2F%2F127.0.0.1%3A1%2Fresponse.php"
    )
    text = await get_text(f"{sim.url}/sendsms.aspx", query)
    msgid = next(iter(sim.sim.messages))
    assert text == f"msgid={msgid}\nstatuscode=0\nstatusstr=OK\npoint=1\n"
    assert sim.sim.messages[msgid].response == "http://127.0.0.1:1/response.php"
    # BIG5 by default; single SMS cut at 70 characters, as the document warns.
    await get_text(
        f"{sim.url}/sendsms.aspx",
        f"username=goipd&password={PASSWORD}&dstaddr=0912345678&smbody=" + "a" * 100,
    )
    assert sim.sim.sends[-1]["truncated"] is True and sim.sim.sends[-1]["encoding"] is None
    auth = f"username=goipd&password={PASSWORD}"
    one = await get_text(f"{sim.url}/query.asp", f"{auth}&msgid={msgid}&dstaddr=0912345678")
    assert one in ("0|ENROUTE|0912345678", "0|DELIVRD|0912345678")
    bulk = await get_text(f"{sim.url}/queryBulk.asp", f"{auth}&msgid={msgid}")
    assert bulk.endswith(f"|0912345678|{msgid}")
    assert (
        await get_text(f"{sim.url}/query_point.asp", auth)
        == "statuscode=0\nstatusstr=OK\npoint=9998\n"
    )
    assert (
        parse_balance(await get_text(f"{sim.url}/query_point.asp", f"{auth}&rtype=JSON")).point
        == 9998
    )
    cancel = await get_text(f"{sim.url}/sendsms_cancel.asp", f"{auth}&msgid={msgid}")
    assert parse_cancel(cancel).statuscode == -1  # sent already


async def test_simulator_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await start_smsgo_sim(host="0.0.0.0")


async def test_simulator_without_quirks() -> None:
    running = await start_smsgo_sim(password=PASSWORD, quirks=False, dlr_delay=0)
    client = make_provider(running)
    try:
        [result] = await client.send(["+886912345678"], "plain")
        assert await client.balance() == 9_999.0
        await eventually(
            lambda: "ENROUTE" not in running.sim.messages[result.upstream_id or ""].states.values()
        )
        [status] = await client.status([(result.upstream_id or "", "+886912345678")])
        assert status.state is State.DELIVERED
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{running.url}/query_point.asp?username=goipd&password={PASSWORD}&rtype=JSON"
            ) as resp,
        ):
            assert resp.content_type == "application/json"
            assert (
                await resp.text() == '{"results":{"result":[{"statuscode": "0", "point": "9999"}]}}'
            )
    finally:
        await client.close()
        await running.close()
