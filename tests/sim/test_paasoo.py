"""The PaaSoo simulator: what it refuses, its DLR pushes and their retries, the document's reply
byte for byte, its control API, loopback only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from goipd.sim.paasoo import PaasooSim, RunningPaasooSim, start_paasoo_sim
from goipd.upstream.paasoo import PaasooProvider, parse_send_reply
from tests.helpers.cloud import serve_routes
from tests.helpers.paasoo import DOC_FAILURE, KEY, SECRET, Receiver, make_provider, send_one


@pytest.fixture
async def running() -> AsyncIterator[RunningPaasooSim]:
    sim = await start_paasoo_sim(key=KEY, secret=SECRET, dlr_delay=0.01)
    yield sim
    await sim.close()


@pytest.fixture
async def provider(running: RunningPaasooSim) -> AsyncIterator[PaasooProvider]:
    client = make_provider(running.url)
    yield client
    await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with serve_routes(web.get("/hooks/paasoo/report", recv.handle)) as base:
        recv.url = f"{base}/hooks/paasoo/report?token=hook-token-123"
        yield recv


async def test_dlr_push_is_retried(
    running: RunningPaasooSim, provider: PaasooProvider, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    running.sim.set_dlr(client_url=receiver.url)
    await provider.send(["+6588888888"], "hi")
    await running.sim.settle()
    assert len(receiver.reports) == 1
    assert running.sim.dlrs[0]["outcome"] == "ok"


async def test_dlr_without_client_url_is_not_pushed(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    await provider.send(["+6588888888"], "hi")
    await running.sim.settle()
    assert running.sim.dlrs[0]["outcome"] == "no_url"


async def test_simulator_refuses_more_than_fifty(running: RunningPaasooSim) -> None:
    to = ",".join(f"6581{i:06d}" for i in range(51))
    async with aiohttp.ClientSession() as http:
        resp = await http.get(
            f"{running.url}/json", params={"key": KEY, "secret": SECRET, "to": to, "text": "x"}
        )
        body = await resp.read()
    reply = parse_send_reply(body)
    assert reply.status == "400"
    assert "at most 50" in (reply.status_code or "")
    assert running.sim.sent == []


async def test_simulator_refuses_text_that_is_not_utf8(running: RunningPaasooSim) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{running.url}/json?key={KEY}&secret={SECRET}&to=6588888888&text=%D6%D0"
        resp = await http.get(URL(url, encoded=True))
        reply = parse_send_reply(await resp.read())
    assert reply.status == "400"


async def test_control_api(running: RunningPaasooSim, provider: PaasooProvider) -> None:
    await send_one(provider)
    async with aiohttp.ClientSession() as http:
        state = await (await http.get(f"{running.url}/_control/state")).json()
        assert state["key"] == KEY
        assert SECRET not in json.dumps(state)
        assert state["sent"] == 1
        sent = await (await http.get(f"{running.url}/_control/sent")).json()
        assert sent[0]["to"] == ["6588888888"]
        resp = await http.put(f"{running.url}/_control/fault", json={"mode": "nonsense"})
        assert resp.status == 400
        resp = await http.put(f"{running.url}/_control/dlr", json={"client_url": "ftp://x"})
        assert resp.status == 400
        resp = await http.put(f"{running.url}/_control/dlr", json={"default": {"statuscode": "x"}})
        assert resp.status == 400
        resp = await http.put(f"{running.url}/_control/account", json={"balance": "lots"})
        assert resp.status == 400
        resp = await http.put(f"{running.url}/_control/account", json={"colour": "red"})
        assert resp.status == 400
        dlrs = await (await http.get(f"{running.url}/_control/dlrs")).json()
        assert isinstance(dlrs, list)


async def test_simulator_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await start_paasoo_sim(host="0.0.0.0")


def test_simulator_reply_matches_the_document_byte_for_byte() -> None:
    sim = PaasooSim(key=KEY, secret=SECRET)
    assert sim.encode(sim.error_reply("401", "illegal secret.")) == DOC_FAILURE
