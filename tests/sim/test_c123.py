"""The c123 simulator: the document's GET example in GBK, its control API, loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.upstream.c123 import C123Provider, CountReply, parse_code, parse_count
from tests.helpers.c123 import MOBILE, PASSWORD, PWD_MD5, UID, make_provider

DOC_PWD = "fa246d0262c3925617b0c72bb20eeb1d"


@pytest.fixture
async def running() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(uid=UID, password=PASSWORD, rx_min_interval=0.0)
    yield sim
    await sim.close()


@pytest.fixture
async def provider(running: RunningC123Sim) -> AsyncIterator[C123Provider]:
    client = make_provider(running.url)
    yield client
    await client.close()


async def test_document_get_example_in_gbk() -> None:
    running = await start_c123_sim(uid="9999", pwd_md5=DOC_PWD)
    url = (
        f"{running.url}/tx/?uid=9999&pwd={DOC_PWD}"
        "&mobile=13900008888,13900009999,13100006666,0218882228"
        "&content=%D6%D0%B9%FA%B6%CC%D0%C5%CD%F8%B7%A2%CB%CD%B2%E2%CA%D4"
    )
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(URL(url, encoded=True))
            assert parse_code(await resp.read()) == "100"
            many = ",".join(f"139{i:08d}" for i in range(51))
            resp = await http.get(
                URL(
                    f"{running.url}/tx/?uid=9999&pwd={DOC_PWD}&mobile={many}&content=x",
                    encoded=True,
                )
            )
            assert parse_code(await resp.read()) == "106"
            bad_gbk = f"{running.url}/tx/?uid=9999&pwd={DOC_PWD}&mobile=13900008888&content=%FF%FF"
            resp = await http.get(URL(bad_gbk, encoded=True))
            assert parse_code(await resp.read()) == "104"
            resp = await http.post(
                f"{running.url}/tx/",
                data={
                    "uid": "9999",
                    "pwd": DOC_PWD,
                    "mobile": "13900008888",
                    "content": "x",
                    "time": "2010/05/27 12:01",
                },
            )
            assert parse_code(await resp.read()) == "113"
            resp = await http.get(
                URL(f"{running.url}/mm/?uid=9999&pwd={DOC_PWD.upper()}", encoded=True)
            )
            assert parse_count(await resp.read()) == CountReply("101", None)
            resp = await http.get(f"{running.url}/mm/?uid=9999&pwd={DOC_PWD}&cmd=what")
            assert parse_count(await resp.read()) == CountReply("103", None)
    finally:
        await running.close()
    (call,) = running.sim.sent
    assert call["content"] == "中国短信网发送测试"
    assert call["mobiles"] == ["13900008888", "13900009999", "13100006666", "0218882228"]
    assert (call["method"], call["encode"]) == ("GET", "")


async def test_control_api(running: RunningC123Sim, provider: C123Provider) -> None:
    await provider.send([MOBILE], "hi")
    async with aiohttp.ClientSession() as http:
        state = await (await http.get(f"{running.url}/_control/state")).json()
        assert (state["uid"], state["sent"], state["sent_total"]) == (UID, 1, 1)
        assert PWD_MD5 not in str(state)
        sent = await (await http.get(f"{running.url}/_control/sent")).json()
        assert sent[0]["mobiles"] == ["13900008888"]
        resp = await http.put(f"{running.url}/_control/account", json={"balance": 5})
        assert (await resp.json())["balance"] == 5
        for path, body in (
            ("fault", {"mode": "nonsense"}),
            ("fault", {"mode": "code", "code": "1"}),
            ("fault", {"mode": "none", "colour": "red"}),
            ("account", {"balance": -1}),
            ("account", {"colour": "red"}),
        ):
            resp = await http.put(f"{running.url}/_control/{path}", json=body)
            assert resp.status == 400, body
        resp = await http.post(f"{running.url}/_control/replies", json={"from_number": "1"})
        assert resp.status == 400
        resp = await http.post(
            f"{running.url}/_control/replies",
            json={"from_number": "13912341234", "content": "x", "time": "noon"},
        )
        assert resp.status == 400
        replies = await (await http.get(f"{running.url}/_control/replies")).json()
        assert replies == {"pending": [], "handed_out": []}


async def test_simulator_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await start_c123_sim(host="0.0.0.0")
