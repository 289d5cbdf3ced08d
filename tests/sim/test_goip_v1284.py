"""The simulator's `v1.28.4` profile answers as the vendor's SMS Server v1.28.4 really does.

Over real loopback HTTP: PHP's json_encode replies, sendsms checks in the PHP's order, the
text put unescaped into MySQL (Bad query, `\\n` rewritten, emoji cut), SMS parts and quotas,
the missing-mbstring warning, the engine (slow, dead, restarted), a database that is down, the
device's 3000-byte limit; and the pure models of MySQL literals and the part counter.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from goipd.sim.goip import RunningSimulator, SimFleet, SimServer
from goipd.sim.goip_sql import (
    BadQuery,
    SqlLiteralError,
    parse_literal_body,
    php_empty,
    php_json_encode,
    php_string,
    run_statement,
    sms_parts,
    sql_escape,
    stored_text,
)
from tests.helpers.simulator import control, until

Start = Callable[..., Awaitable[RunningSimulator]]
AUTH = {"username": "root", "password": "pw"}
SYNTAX = (
    "You have an error in your SQL syntax; check the manual that corresponds to your MariaDB "
    "server version for the right syntax to use near "
)
WARNING = "Warning: need install php-mbstring module<br>"
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z")


def spec(*lines: dict[str, Any], **server: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "username": "root",
                "password": "pw",
                "profile": "v1.28.4",
                "lines": list(lines) or [{"line_id": "G101"}],
                "send_delay": 0.01,
                "receipt_delay": 0.01,
                **server,
            }
        ]
    }


@pytest.fixture
def start(simulator: Start) -> Start:
    return simulator


@dataclass
class Hook:
    """A push target: every raw body and its Content-Type."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    def json(self) -> list[Any]:
        return [json.loads(body) for body in self.bodies]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    rec = Hook()

    async def handle(request: web.Request) -> web.Response:
        rec.bodies.append(await request.read())
        rec.types.append(request.headers.get("Content-Type", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


@dataclass
class Reply:
    status: int
    content_type: str
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


async def post(
    sim: RunningSimulator,
    api: str,
    body: dict[str, Any] | None = None,
    *,
    raw: bytes | None = None,
    auth: Any = AUTH,
    timeout: float = 10.0,
) -> Reply:
    payload = {"auth": auth, **(body or {})}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(
            f"{sim.base_url('hq')}/goip/{api}/",
            data=raw if raw is not None else json.dumps(payload).encode(),
        ) as resp,
    ):
        return Reply(resp.status, resp.content_type, await resp.text(), dict(resp.headers))


async def sendsms(sim: RunningSimulator, **body: Any) -> Reply:
    reply = await post(sim, "sendsms", body)
    assert reply.status == 200, reply
    return reply


async def accept(sim: RunningSimulator, number: str = "123", content: str = "hi", **kw: Any) -> str:
    reply = await sendsms(sim, number=number, content=content, **kw)
    assert re.fullmatch(r'\{"result":"ACCEPT","taskID":"\d+"\}', reply.text), reply.text
    task: str = reply.json()["taskID"]
    return task


async def querysms(sim: RunningSimulator, task_id: Any) -> list[dict[str, Any]]:
    reply = await post(sim, "querysms", {"taskID": task_id})
    assert reply.status == 200, reply
    rows: list[dict[str, Any]] = reply.json()
    return rows


async def querylines(sim: RunningSimulator) -> list[dict[str, str]]:
    reply = await post(sim, "querylines")
    assert reply.status == 200, reply
    rows: list[dict[str, str]] = reply.json()
    return rows


def hq(sim: RunningSimulator) -> SimServer:
    return sim.fleet.servers["hq"]


async def sent_contents(sim: RunningSimulator, count: int) -> list[str]:
    await until(lambda: len(hq(sim).sent) >= count)
    return [record["content"] for record in hq(sim).sent]


# --- reply forms --------------------------------------------------------------------------------


async def test_querylines_is_json_encode_of_the_goip_table(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "g2", "reg": "LOGOUT", "remain_sms": 5},
            {"line_id": "G101", "num": "+886/912", "day_remain_sms": 0},
            {"line_id": "線3", "online": False},
        )
    )
    reply = await post(sim, "querylines")
    assert (reply.status, reply.content_type) == (200, "text/html")
    # order by name (case-insensitive), every value a string, no trailing comma, \/ and \uXXXX.
    assert reply.text == (
        '[{"goip_line":"G101","online":"1","reg":"LOGIN","remain_sms":"-1",'
        '"day_remain_sms":"0","num":"+886\\/912"},'
        '{"goip_line":"g2","online":"1","reg":"LOGOUT","remain_sms":"5","day_remain_sms":"-1"},'
        '{"goip_line":"\\u7dda3","online":"0","reg":"","remain_sms":"-1","day_remain_sms":"-1"}]'
    )


async def test_sendsms_and_querysms_forms_and_the_push(start: Start, hook: Hook) -> None:
    sim = await start(spec({"line_id": "G101", "remain_sms": 0}, status_push_url=hook.url))
    reply = await sendsms(sim, number="0912/345", content="héllo")
    assert reply.content_type == "text/html"
    assert reply.text == '{"result":"ACCEPT","taskID":"1001"}'
    await asyncio.sleep(0.2)
    # No quota: the engine does not use the line; the row waits without a line.
    status = await post(sim, "querysms", {"taskID": "1001"})
    assert status.content_type == "text/html"
    assert re.fullmatch(
        r'\[\{"taskID":"1001\.0912\\/345","goip_line":null,'
        r'"sendTime":"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d","send":"unsend"\}\]',
        status.text,
    ), status.text
    (row,) = status.json()
    assert row["goip_line"] is None and STAMP.match(row["sendTime"])
    assert hook.bodies == []

    hq(sim).set_line("G101", remain_sms=10)
    await until(lambda: len(hook.bodies) == 2)  # the send report, then the receipt
    first, second = hook.json()
    assert first == {
        "taskID": "1001.0912/345",
        "goip_line": "G101",
        "sendTime": row["sendTime"],
        "send": "succeeded",
    }
    assert second == {**first, "receipt": 1}
    assert b'"receipt":1' in hook.bodies[1] and b"0912\\/345" in hook.bodies[1]
    assert hook.types[0] == "application/json; charset=utf-8"
    (final,) = await querysms(sim, "1001.0912/345")
    assert final == second and isinstance(final["receipt"], int)
    assert await querysms(sim, "1001") == [final]
    assert await querysms(sim, "1001.0") == [final]  # "0" is empty() to PHP: no number filter
    assert await querysms(sim, "4242") == []
    assert (await post(sim, "querysms", {"taskID": "4242"})).text == "[]"
    assert await querysms(sim, "") == []


async def test_auth_failures_are_401_with_an_empty_body(start: Start) -> None:
    sim = await start(spec())
    for reply in (
        await post(sim, "querylines", auth={"username": "root", "password": "no"}),
        await post(sim, "querylines", auth={"username": "root", "password": "0"}),
        await post(sim, "sendsms", auth=None),
        await post(sim, "querysms", raw=b"{not json"),
        await post(sim, "querylines", raw=b""),
    ):
        assert (reply.status, reply.text, reply.content_type) == (401, "", "text/html")
    # MySQL compares the user name case-insensitively.
    assert (
        await post(sim, "querylines", auth={"username": "ROOT", "password": "pw"})
    ).status == 200


# --- sendsms decisions --------------------------------------------------------------------------


async def test_empty_content_or_number_is_rejected(start: Start) -> None:
    sim = await start(spec())
    error = '{"result":"REJECT","reason":"content or number error"}'
    for body in (
        {"number": "123", "content": ""},
        {"number": "123", "content": "0"},
        {"number": "123"},
        {"number": "0", "content": "hi"},
        {"number": "", "content": "hi"},
        {"content": "hi"},
        {"number": "123", "content": 0},
    ):
        assert (await sendsms(sim, **body)).text == error, body
    assert hq(sim).counters["rejected_content_or_number_error"] == 7
    assert await control(sim, "GET", "servers/hq/tasks") == []


async def test_line_and_provider_checks_in_the_php_order(start: Start) -> None:
    sim = await start(
        spec(
            {"line_id": "G101", "provider": "CHT", "remain_sms": 0},
            {"line_id": "G102", "provider": "FET", "reg": "LOGOUT"},
        )
    )
    none_line = '{"result":"REJECT","reason":"none_line"}'
    none_provider = '{"result":"REJECT","reason":"none_provider"}'
    assert (await sendsms(sim, number="1", content="hi", goip_line="G999")).text == none_line
    assert (await sendsms(sim, number="1", content="hi", goip_line="G102")).text == none_line
    # goip_line wins over provider; MySQL matches the name case- and trailing-space-blind.
    await accept(sim, "1", goip_line="g101 ", provider="nope")
    assert (await sendsms(sim, number="1", content="hi", provider="nope")).text == none_provider
    assert (await sendsms(sim, number="1", content="hi", provider="FET")).text == none_line
    await accept(sim, "1", provider="cht")
    hq(sim).set_line("G101", reg="LOGOUT")
    assert (await sendsms(sim, number="1", content="hi")).text == none_line


async def test_a_line_without_quota_is_accepted_and_its_recipients_wait(
    start: Start, hook: Hook
) -> None:
    sim = await start(spec({"line_id": "G101", "day_remain_sms": 0}, status_push_url=hook.url))
    task = await accept(sim, "1,2", goip_line="G101")
    await asyncio.sleep(0.3)
    assert [row["send"] for row in await querysms(sim, task)] == ["unsend", "unsend"]
    assert hq(sim).sent == [] and hook.bodies == []
    assert [(t["number"], t["state"]) for t in await control(sim, "GET", "servers/hq/tasks")] == [
        ("1", "unsend"),
        ("2", "unsend"),
    ]
    await control(sim, "PATCH", "servers/hq/lines/G101", {"day_remain_sms": 1})
    await until(lambda: len(hq(sim).sent) == 1)
    await asyncio.sleep(0.2)
    # One part left for one recipient; the other waits on.
    assert sorted(row["send"] for row in await querysms(sim, task)) == ["succeeded", "unsend"]
    assert hq(sim).lines["G101"].day_remain_sms == 0


async def test_one_task_per_recipient(start: Start) -> None:
    sim = await start(spec())
    task = await accept(sim, "1,2,1")
    await sent_contents(sim, 2)
    tasks = await control(sim, "GET", "servers/hq/tasks")
    assert [(t["task_id"], t["number"], t["content"]) for t in tasks] == [
        (task, "1", "hi"),
        (task, "2", "hi"),
    ]
    state = await control(sim, "GET", "servers/hq")
    assert state["counters"]["tasks_stored"] == 1
    assert state["counters"]["recipients_stored"] == 2
    assert set(hq(sim).sent[0]) >= {"parts", "content", "number", "result"}


# --- the text through MySQL ---------------------------------------------------------------------


async def test_an_apostrophe_is_a_bad_query_and_nothing_is_stored(start: Start) -> None:
    sim = await start(spec())
    reply = await sendsms(sim, number="123", content="don't stop")
    assert reply.content_type == "text/html"
    sql = "INSERT INTO message (type,msg,userid,tel,prov,goipid,total) VALUES "
    sql += "(100, 'don't stop','1','123','','','1')"
    near = "'t stop','1','123','','','1')'"
    assert reply.text == f"Bad query: {SYNTAX}{near} at line 1({sql})"
    assert await control(sim, "GET", "servers/hq/tasks") == []
    assert await querysms(sim, "1001") == []
    counters = (await control(sim, "GET", "servers/hq"))["counters"]
    assert counters["bad_query"] == 1 and "tasks_stored" not in counters
    await asyncio.sleep(0.1)
    assert hq(sim).sent == []


async def test_a_bad_number_sends_nothing(start: Start) -> None:
    sim = await start(spec())
    reply = await sendsms(sim, number="12'3", content="hi")
    assert reply.text.startswith(
        f"Bad query: {SYNTAX}'3','','','1')' at line 1(INSERT INTO message"
    )
    # A number whose comma-split piece ends in a backslash passes the message INSERT (the
    # message row is stored) and breaks the sends INSERT: no recipients, querysms [].
    reply = await sendsms(sim, number="123\\,456", content="hi")
    # (The failed message INSERT took no id: the first stored message is 1001.)
    assert reply.text.startswith(f"Bad query: {SYNTAX}'1'),(1001,'1','456','','1')' at line 1(")
    assert "insert into sends (messageid,userid,telnum,provider,total) values(1001," in reply.text
    assert await querysms(sim, "1001") == []
    assert await control(sim, "GET", "servers/hq/tasks") == []
    counters = (await control(sim, "GET", "servers/hq"))["counters"]
    assert (counters["bad_query"], counters["tasks_stored"]) == (2, 1)
    await asyncio.sleep(0.1)
    assert hq(sim).sent == []


async def test_backslash_sequences_and_emoji_are_rewritten_before_sending(start: Start) -> None:
    sim = await start(spec())
    await accept(sim, "1", "C:\\new")
    await accept(sim, "2", "x😀y")
    await accept(sim, "3", "tab\\there 100\\% \\q")
    assert await sent_contents(sim, 3) == ["C:\new", "x", "tab\there 100\\% q"]
    tasks = await control(sim, "GET", "servers/hq/tasks")
    assert [t["content"] for t in tasks] == ["C:\new", "x", "tab\there 100\\% q"]


async def test_sql_escaped_text_arrives_as_meant(start: Start) -> None:
    sim = await start(spec())
    assert sql_escape("don't stop") == "don\\'t stop"
    await accept(sim, "1", "don\\'t stop")
    await accept(sim, "2", "C:\\\\new")
    await accept(sim, "3", sql_escape("it's 100% C:\\x\\"))
    assert await sent_contents(sim, 3) == ["don't stop", "C:\\new", "it's 100% C:\\x\\"]


async def test_a_trailing_backslash_is_a_bad_query(start: Start) -> None:
    sim = await start(spec())
    reply = await sendsms(sim, number="123", content="path\\")
    # The backslash escapes the closing quote; the literal runs on to the next quote.
    assert reply.text.startswith(f"Bad query: {SYNTAX}'1','123','','','1')' at line 1(")
    assert reply.text.endswith("VALUES (100, 'path\\','1','123','','','1'))")
    assert await control(sim, "GET", "servers/hq/tasks") == []


async def test_a_text_over_3000_bytes_fails_with_500(start: Start) -> None:
    sim = await start(spec())
    long_task = await accept(sim, "1", "é" * 1501)  # 3002 bytes
    ok_task = await accept(sim, "2", "a" * 3000)
    await sent_contents(sim, 2)
    (row,) = await querysms(sim, long_task)
    assert (row["send"], row["err_code"]) == ("failed", "500")
    assert (await querysms(sim, ok_task))[0]["send"] == "succeeded"


# --- parts and quotas ---------------------------------------------------------------------------


async def test_parts_are_counted_as_the_php_does_and_taken_off_both_quotas(start: Start) -> None:
    sim = await start(spec({"line_id": "G101", "remain_sms": 100, "day_remain_sms": 50}))
    texts = ["é" * 70, "é" * 71, "a" * 160, "a" * 161, "中" * 60]
    for index, text in enumerate(texts):
        await accept(sim, str(index + 1), text)  # (number "0" would be empty() to PHP)
    await sent_contents(sim, len(texts))
    assert [record["parts"] for record in hq(sim).sent] == [1, 2, 1, 2, 1]
    assert [t["parts"] for t in await control(sim, "GET", "servers/hq/tasks")] == [1, 2, 1, 2, 1]
    line = hq(sim).lines["G101"]
    assert (line.remain_sms, line.day_remain_sms) == (93, 43)


async def test_a_line_with_fewer_parts_left_than_needed_is_skipped(start: Start) -> None:
    sim = await start(spec({"line_id": "G101", "day_remain_sms": 1}, {"line_id": "G102"}))
    await accept(sim, "1", "a" * 161)  # 2 parts: only G102 has room
    await accept(sim, "2", "a" * 161, goip_line="G101")  # only G101 may: it waits
    await sent_contents(sim, 1)
    await asyncio.sleep(0.2)
    assert [(r["goip_line"], r["number"]) for r in hq(sim).sent] == [("G102", "1")]
    assert hq(sim).lines["G101"].day_remain_sms == 1


async def test_without_mbstring_every_sendsms_reply_starts_with_the_warning(start: Start) -> None:
    sim = await start(spec(mbstring=False))
    accepted = await sendsms(sim, number="1", content="中" * 60)
    assert accepted.text == WARNING + '{"result":"ACCEPT","taskID":"1001"}'
    rejected = await sendsms(sim, number="", content="hi")
    assert rejected.text == WARNING + '{"result":"REJECT","reason":"content or number error"}'
    bad = await sendsms(sim, number="1", content="it's")
    assert bad.text.startswith(WARNING + "Bad query: ")
    assert not (await post(sim, "querylines")).text.startswith("Warning")
    await sent_contents(sim, 1)
    assert hq(sim).sent[0]["parts"] == 2  # 180 bytes: the byte formula
    assert (await control(sim, "PATCH", "servers/hq", {"mbstring": True}))["mbstring"] is True
    assert (await sendsms(sim, number="1", content="x")).text.startswith("{")


# --- the engine ---------------------------------------------------------------------------------


async def test_a_slow_engine_accepts_late_but_stores_at_once(start: Start) -> None:
    sim = await start(spec(engine="slow", engine_delay=0.4))
    began = time.monotonic()
    sending = asyncio.create_task(sendsms(sim, number="1", content="hi"))
    await until(lambda: bool(hq(sim).tasks))
    assert [row["send"] for row in await querysms(sim, "1001")] == ["unsend"]
    assert len(await querylines(sim)) == 1  # other requests are not held up
    assert time.monotonic() - began < 0.35
    reply = await sending
    assert time.monotonic() - began >= 0.4
    assert reply.text == '{"result":"ACCEPT","taskID":"1001"}'
    assert await sent_contents(sim, 1) == ["hi"]


async def test_a_dead_engine_accepts_late_and_sends_nothing(start: Start, hook: Hook) -> None:
    sim = await start(spec(status_push_url=hook.url))
    state = await control(sim, "PATCH", "servers/hq", {"engine": "dead", "engine_delay": 0.3})
    assert (state["engine"], state["engine_delay"]) == ("dead", 0.3)
    began = time.monotonic()
    task = await accept(sim, "1")
    assert time.monotonic() - began >= 0.3
    # The device went away, but only the engine would have written that down.
    hq(sim).set_line("G101", online=False, reg="")
    await asyncio.sleep(0.3)
    assert [row["send"] for row in await querysms(sim, task)] == ["unsend"]
    assert [(x["online"], x["reg"]) for x in await querylines(sim)] == [("1", "LOGIN")]
    assert hq(sim).sent == [] and hook.bodies == []


async def test_an_engine_restart_reads_lines_offline_then_sends_the_queue(start: Start) -> None:
    sim = await start(spec(engine="dead", engine_delay=0.05, keepalive_after=0.5))
    task = await accept(sim, "1")
    await control(sim, "PATCH", "servers/hq", {"engine": "running"})
    assert [(x["online"], x["reg"]) for x in await querylines(sim)] == [("0", "")]
    none_line = await sendsms(sim, number="2", content="hi")
    assert none_line.text == '{"result":"REJECT","reason":"none_line"}'
    await asyncio.sleep(0.2)
    assert hq(sim).sent == []
    assert await sent_contents(sim, 1) == ["hi"]
    assert [row["send"] for row in await querysms(sim, task)] == ["succeeded"]
    assert [(x["online"], x["reg"]) for x in await querylines(sim)] == [("1", "LOGIN")]
    assert (await control(sim, "GET", "servers/hq"))["counters"]["engine_restarts"] == 1


async def test_the_database_down_answers_could_not_connect(start: Start) -> None:
    sim = await start(spec())
    await control(sim, "PUT", "servers/hq/fault", {"mode": "db_down"})
    for api in ("sendsms", "querysms", "querylines"):
        reply = await post(sim, api, {"number": "1", "content": "hi"}, auth=None)
        assert (reply.status, reply.text, reply.content_type) == (
            200,
            "Could not connect",
            "text/html",
        )
    assert hq(sim).tasks == {}


# --- control API and the document profile -------------------------------------------------------


async def test_control_api_checks_profile_settings(start: Start) -> None:
    sim = await start(spec())
    for body in (
        {"profile": "v1.28"},
        {"engine": "stopped"},
        {"mbstring": "no"},
        {"engine_delay": -1},
        {"keepalive_after": "2"},
        {"engin": "dead"},
    ):
        await control(sim, "PATCH", "servers/hq", body, expect=400)
    await control(sim, "PATCH", "servers/nope", {"engine": "dead"}, expect=404)
    await control(sim, "GET", "servers/nope/tasks", expect=404)
    state = await control(
        sim, "PATCH", "servers/hq", {"engine": "slow", "engine_delay": 1, "keepalive_after": 0}
    )
    assert state == {
        "engine": "slow",
        "engine_delay": 1.0,
        "inbox_layout": "v1.28.4",
        "inbox_ties": "shuffled",
        "keepalive_after": 0.0,
        "mbstring": True,
        "profile": "v1.28.4",
        "session_time": 24,
    }
    with pytest.raises(ValueError, match="engine must be one of"):
        SimFleet.from_spec(spec(engine="off"))
    with pytest.raises(ValueError, match="unknown server fields: engines"):
        SimFleet.from_spec(spec(engines="dead"))


async def test_the_document_profile_is_unchanged(start: Start) -> None:
    sim = await start(spec(profile="document"))
    reply = await post(sim, "querylines")
    assert reply.text.endswith("},\n]")
    reply = await sendsms(sim, number="1", content="don't")
    assert json.loads(reply.text)["result"] == "ACCEPT"
    assert await sent_contents(sim, 1) == ["don't"]
    assert "parts" not in hq(sim).sent[0]
    assert (await post(sim, "querylines", raw=b"{no")).status == 400
    await control(sim, "PATCH", "servers/hq", {"profile": "v1.28.4"})
    assert not (await post(sim, "querylines")).text.endswith(",\n]")


# --- the pure models ----------------------------------------------------------------------------


def test_parse_literal_body_reads_as_mysql_does() -> None:
    assert parse_literal_body("C:\\new") == "C:\new"
    assert parse_literal_body("\\0\\'\\\"\\b\\n\\r\\t\\Z\\\\") == "\0'\"\b\n\r\t\x1a\\"
    assert parse_literal_body("100\\% \\_x") == "100\\% \\_x"
    assert parse_literal_body("\\q\\é") == "qé"
    assert parse_literal_body("it''s") == "it's"
    with pytest.raises(SqlLiteralError):
        parse_literal_body("don't")
    with pytest.raises(SqlLiteralError):
        parse_literal_body("end\\")
    assert parse_literal_body("end\\\\") == "end\\"


@given(st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"])))
def test_escaping_then_parsing_gives_the_text_back(text: str) -> None:
    assert parse_literal_body(sql_escape(text)) == text
    template = "INSERT INTO t (a,b) VALUES ('{}','{}')"
    assert run_statement(template, [sql_escape(text), "x"]) == [text, "x"]


def test_run_statement_reports_where_mariadb_would() -> None:
    template = "select id from goip where name='{}' and gsm_status='LOGIN'"
    assert run_statement(template, ["G1"]) == ["G1"]
    assert run_statement(template, ["a' 'b"]) == ["ab"]  # adjacent literals are one string
    with pytest.raises(BadQuery) as caught:
        run_statement(template, ["x'#"])
    assert caught.value.error == f"{SYNTAX}'' at line 1"
    with pytest.raises(BadQuery) as caught:
        run_statement(template, ["a\nb'c"])
    assert caught.value.error == f"{SYNTAX}'c' and gsm_status='LOGIN'' at line 2"
    assert caught.value.reply.endswith(
        "(select id from goip where name='a\nb'c' and gsm_status='LOGIN')"
    )
    with pytest.raises(BadQuery) as caught:
        run_statement(template, ["a'" + "b" * 100])
    assert caught.value.error == f"{SYNTAX}'{('b' * 100)[:80]}' at line 1"


def test_stored_text_cuts_at_the_first_character_beyond_the_bmp() -> None:
    assert stored_text("x😀y") == "x"
    assert stored_text("中" * 30_000) == "中" * 21_845  # text: 65,535 bytes
    assert stored_text("ok") == "ok"


def test_sms_parts_boundaries() -> None:
    assert [sms_parts("é" * n) for n in (1, 70, 71, 134, 135)] == [1, 1, 2, 2, 3]
    assert [sms_parts("a" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [sms_parts("😀" * n) for n in (70, 71)] == [1, 2]  # characters, not UTF-16 units
    assert sms_parts("中" * 60) == 1 and sms_parts("中" * 60, mbstring=False) == 2
    assert sms_parts("a" * 161, mbstring=False) == 2


def test_php_conversions() -> None:
    values: list[Any] = ["", "0", 0, 0.0, None, False, [], {}, "00", " "]
    assert [php_empty(v) for v in values] == [
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert [php_string(v) for v in (True, False, None, 12, 1e25, 0.1, [1])] == [
        "1",
        "",
        "",
        "12",
        "1.0E+25",
        "0.1",
        "Array",
    ]
    assert php_json_encode({"a": "é/😀", "b": None, "c": 1, "d": [1, "x"]}) == (
        '{"a":"\\u00e9\\/\\ud83d\\ude00","b":null,"c":1,"d":[1,"x"]}'
    )
