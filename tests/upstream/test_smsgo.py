"""smsgo API 6.2: the document's examples through the parsers, property tests of the parsers,
and the client against the simulator over loopback HTTP (every operation, error form, fault)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from goipd.model import State
from goipd.sim.smsgo import RunningSmsgoSim, start_smsgo_sim
from goipd.upstream.cloud import CloudInbound, CloudStatus, Verdict
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.smsgo import (
    SEND_CODES,
    STATUS_WORDS,
    BalanceReply,
    CancelReply,
    SendReply,
    SmsgoProvider,
    StatusLine,
    TextPlan,
    encode_query,
    format_dlvtime,
    from_smsgo_number,
    parse_balance,
    parse_cancel,
    parse_query,
    parse_reply,
    parse_report,
    parse_send_reply,
    plan_text,
    report_ack,
    send_verdict,
    status_state,
    to_smsgo_number,
)
from tests.helpers.cloud import serve_routes
from tests.helpers.smsgo import PASSWORD, TOKEN, Receiver, make_provider

# --- the document's examples -------------------------------------------------------------------

# 三、範例 (ASCII, BIG5 and PUSH examples all show this reply). The parenthesised notes after the
# values ("(如果有錯,值為負,見表1)") are the document explaining, not part of the reply.
DOC_SEND_TEXT = "msgid= 100101121234567\nstatuscode=0\nstatusstr=OK\npoint=1\n"
# 二、Two Phase Connection: the reply's layout, without `point`.
DOC_SEND_LAYOUT = "msgid=100101121234567\nstatuscode=0\nstatusstr=OK\n"
# FAQ 7.
DOC_SEND_FAQ7 = "msgid=-1\nstatuscode=-1\nstatusstr=CGI string error!!\npoint=0\n"
# JSON 範例.
DOC_SEND_JSON = '{"result":{"msgid":1504280910499665,"statuscode":"0","statusstr":"OK","point":1}}'
DOC_POINT_JSON = '{"results":{"result":[{"statuscode": "0","point": "6220"}]}}'
DOC_POINT_JSON_ALT = '{"results":{"result": [{"statuscode": "0", "point": "6220"}]}}'
DOC_QUERY_JSON = (
    '{"results":{"result":[{"statusCode": "0","statusStr":"DELIVRD","cellphone":"0988123456"},]}}'
)
DOC_QUERY_JSON_ALT = (
    '{"results":{"result": [{"statusCode": "0", "statusStr": "DELIVRD", '
    '"cellphone": "0988123456"},]}}'
)
# Phase two, with the document's placeholder 09xxxxxxxx filled in.
DOC_REPORT = "msgid=100101121234567&statusstr=DELIVRD&statuscode=0&dstaddr=0912345678"
DOC_REPORT_LAYOUT = "msgid=100101121234567&statuscode=0&statusstr=DELIVRD"
DOC_ACK = "magicid=tccrd_sms_gateway_rpack\nmsgid=100101121234567\n"


@pytest.mark.parametrize(
    "body", [DOC_SEND_TEXT, DOC_SEND_TEXT.encode(), DOC_SEND_TEXT.replace("\n", "\r\n")]
)
def test_send_reply_text_example(body: str | bytes) -> None:
    assert parse_send_reply(body) == SendReply("100101121234567", 0, "OK", 1.0)


def test_send_reply_layout_and_faq_examples() -> None:
    assert parse_send_reply(DOC_SEND_LAYOUT) == SendReply("100101121234567", 0, "OK", None)
    # An error reply carries a negative msgid: no id to keep.
    assert parse_send_reply(DOC_SEND_FAQ7) == SendReply(None, -1, "CGI string error!!", 0.0)


def test_send_reply_json_example() -> None:
    assert parse_send_reply(DOC_SEND_JSON) == SendReply("1504280910499665", 0, "OK", 1.0)
    # Strings for numbers, numbers for strings, a BOM and a trailing comma are all tolerated.
    quirky = '\ufeff{"result":{"msgid":"1504280910499665","statuscode":0,"statusstr":"OK","point":"2",},}'
    assert parse_send_reply(quirky) == SendReply("1504280910499665", 0, "OK", 2.0)


def test_send_reply_big5_error_text() -> None:
    body = "msgid=-8\nstatuscode=-8\nstatusstr=點數不夠\npoint=0\n".encode("big5")
    assert parse_send_reply(body) == SendReply(None, -8, "點數不夠", 0.0)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "<html><body>Service Unavailable</body></html>",
        "<?xml version='1.0'?><result/>",
        "hello world",
        "msgid=1\nstatusstr=OK\n",  # no statuscode
        "statuscode=0\nstatusstr=OK\n",  # accepted without a msgid
        "msgid=abc\nstatuscode=0\n",
        "msgid=0\nstatuscode=0\n",
        "msgid=1\nstatuscode=zero\n",
        "msgid=1\nstatuscode=0\nstatuscode=0\n",
        "msgid=1\nstatuscode=0\npoint=lots\n",
        '{"result":{"msgid":1504280910499665,"statusc',  # cut off
        '{"result":[]}',
        '{"results":[]}',
        "[1, 2]",
        '{"result":{"msgid":' + "1" * 5000 + ',"statuscode":"0"}}',
        b"\xff\xfe\xfa",
    ],
)
def test_send_reply_garbage(body: str | bytes) -> None:
    with pytest.raises(ParseError):
        parse_send_reply(body)


@pytest.mark.parametrize("body", [DOC_QUERY_JSON, DOC_QUERY_JSON_ALT])
def test_query_json_example(body: str) -> None:
    assert parse_query(body) == [StatusLine(0, "DELIVRD", "0988123456", None)]


def test_query_text_forms() -> None:
    # query.asp: (簡訊狀態碼)|(簡訊狀態值)|(電話號碼)
    assert parse_query("0|DELIVRD|0988123456") == [StatusLine(0, "DELIVRD", "0988123456", None)]
    # queryBulk.asp: ...|(訊息代號), lines separated by \r\n.
    bulk = "0|DELIVRD|0988123456|1504280910499665\r\n0|UNDELIV|+8613681912700|1504280910499666\r\n"
    assert parse_query(bulk) == [
        StatusLine(0, "DELIVRD", "0988123456", "1504280910499665"),
        StatusLine(0, "UNDELIV", "+8613681912700", "1504280910499666"),
    ]
    assert parse_query("-2|授權錯誤(帳號/密碼錯誤/IP錯誤)|") == [
        StatusLine(-2, "授權錯誤(帳號/密碼錯誤/IP錯誤)", None, None)
    ]
    assert parse_query("") == []
    assert parse_query('{"results":{"result":[]}}') == []


@pytest.mark.parametrize(
    "body",
    [
        "0|DELIVRD",
        "0|DELIVRD|0988123456|1504280910499665|extra",
        "0|DELIVRD|abc",
        "0|DELIVRD|",
        "x|DELIVRD|0988123456",
        "0|DELIV RD!|0988123456",
        "0|DELIVRD|0988123456|12ab",
        "<html>502 Bad Gateway</html>",
        '{"results":{"result":[{"statusCode":"0","statusStr":"DELIVRD"}]}}',
        '{"results":{"result":[{"statusCode":"0","statusStr":"DELIVRD","cellphone":',
        '{"results":"none"}',
    ],
)
def test_query_garbage(body: str) -> None:
    with pytest.raises(ParseError):
        parse_query(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (DOC_POINT_JSON, BalanceReply(0, "", 6220.0)),
        (DOC_POINT_JSON_ALT, BalanceReply(0, "", 6220.0)),
        (
            '{"results":{"result":[{"statuscode":"0","point":"6220"},]}}',
            BalanceReply(0, "", 6220.0),
        ),
        ('{"results":{"result":[{"statuscode":0,"point":12.5}]}}', BalanceReply(0, "", 12.5)),
        ("statuscode=0\nstatusstr=OK\npoint=6220\n", BalanceReply(0, "OK", 6220.0)),
        ("point=6220", BalanceReply(0, "", 6220.0)),
        ("6220\r\n", BalanceReply(0, "", 6220.0)),
        (
            '{"results":{"result":[{"statuscode":"-2","point":"0"}]}}',
            BalanceReply(-2, "", 0.0),
        ),
        ("statuscode=-2\nstatusstr=授權錯誤\n", BalanceReply(-2, "授權錯誤", None)),
    ],
)
def test_balance_forms(body: str, expected: BalanceReply) -> None:
    assert parse_balance(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "statuscode=0\n",
        "nan",
        "inf",
        "lots",
        '{"results":{"result":[]}}',
        '{"results":{"result":[{"statuscode":"0","point":"many"}]}}',
        "<html></html>",
    ],
)
def test_balance_garbage(body: str) -> None:
    with pytest.raises(ParseError):
        parse_balance(body)


def test_cancel_forms() -> None:
    assert parse_cancel("msgid=1504280910499665\nstatuscode=0\nstatusstr=OK\n") == CancelReply(
        0, "OK"
    )
    assert parse_cancel('{"result":{"msgid":1504280910499665,"statuscode":"-1"}}') == CancelReply(
        -1, ""
    )
    for bad in ("", "OK", "statusstr=OK", "<html/>", '{"result":"x"}'):
        with pytest.raises(ParseError):
            parse_cancel(bad)


def test_report_document_example_and_ack() -> None:
    assert parse_report(dict(parse_qsl(DOC_REPORT))) == CloudStatus(
        upstream_id="100101121234567",
        number="+886912345678",
        state=State.DELIVERED,
        code="DELIVRD",
        meaning="message is delivered to destination",
    )
    # The interface section's layout has no dstaddr: the report covers the msgid.
    status = parse_report(dict(parse_qsl(DOC_REPORT_LAYOUT)))
    assert (status.upstream_id, status.number, status.state) == (
        "100101121234567",
        None,
        State.DELIVERED,
    )
    assert report_ack("100101121234567") == DOC_ACK


# Table 2, every word, with the state goipd gives it.
TABLE_2 = {
    "DELIVRD": State.DELIVERED,
    "EXPIRED": State.FAILED,
    "DELETED": State.FAILED,
    "UNDELIV": State.FAILED,
    "ABSENT": State.FAILED,
    "SPAM": State.FAILED,
    "BLOCK": State.FAILED,
    "ACCEPTD": State.SENT,
    "UNKNOWN": State.SENT,
    "REJECTD": State.FAILED,
    "SYNTAXE": State.FAILED,
}


@pytest.mark.parametrize(("word", "state"), TABLE_2.items())
def test_every_table_2_word(word: str, state: State) -> None:
    status = parse_report({"msgid": "1504280910499665", "statusstr": word, "statuscode": "0"})
    assert (status.state, status.code) == (state, word)
    assert status.meaning and status.meaning.isascii()


def test_status_words_beyond_table_2() -> None:
    # The "Message State" column names the same states in full.
    for long, short in [
        ("DELIVERED", "DELIVRD"),
        ("UNDELIVERABLE", "UNDELIV"),
        ("REJECTED", "REJECTD"),
    ]:
        assert status_state(long)[:2] == (TABLE_2[short], short)
    assert status_state("scheduled")[:2] == (State.QUEUED, "SCHEDULED")
    assert status_state("ENROUTE")[0] is State.SENT
    assert status_state("")[0] is State.SENT
    assert status_state("WHATEVER")[0] is State.SENT
    assert set(TABLE_2) <= set(STATUS_WORDS)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"msgid": "1504280910499665"},
        {"statusstr": "DELIVRD"},
        {"msgid": "abc", "statusstr": "DELIVRD"},
        {"msgid": "0", "statusstr": "DELIVRD"},
        {"msgid": "1504280910499665", "statusstr": "DELIV RD!"},
        {"msgid": "1504280910499665", "statusstr": "DELIVRD", "statuscode": "ok"},
        {"msgid": "1504280910499665", "statusstr": "DELIVRD", "dstaddr": "someone"},
    ],
)
def test_report_garbage(query: dict[str, str]) -> None:
    with pytest.raises(ParseError):
        parse_report(query)


def test_report_number_forms() -> None:
    base = {"msgid": "1504280910499665", "statusstr": "UNDELIV", "statuscode": "0"}
    assert parse_report({**base, "dstaddr": "+8613681912700"}).number == "+8613681912700"
    # A `+` sent unencoded arrives decoded as a space.
    assert parse_report({**base, "dstaddr": " 8613681912700"}).number == "+8613681912700"


def test_reply_parse() -> None:
    query = {
        "msgid": "1504280910499665",
        "srcaddr": "0912345678",
        "dstaddr": "0911000111",
        "smbody": "好的, 收到",
        "encoding": "UCS2",
        "timestamp": "2024/05/01 13:45:00",
    }
    assert parse_reply(query) == CloudInbound(
        from_number="+886912345678",
        to_number="+886911000111",
        text="好的, 收到",
        upstream_time="2024/05/01 13:45:00",
    )
    minimal = parse_reply({"srcaddr": "+8613681912700", "smbody": ""})
    assert (minimal.from_number, minimal.to_number, minimal.text) == ("+8613681912700", None, "")
    for bad in (
        {"smbody": "x"},
        {"srcaddr": "0912345678"},
        {"srcaddr": "nobody", "smbody": "x"},
        {"srcaddr": "0912345678", "smbody": "x", "encoding": "EBCDIC"},
        {"srcaddr": "0912345678", "smbody": "x", "msgid": "x1"},
        {"srcaddr": "0912345678", "smbody": "x" * 5000},
    ):
        with pytest.raises(ParseError):
            parse_reply(bad)


# Table 1, every code, with the verdict goipd gives it (the judgement is in SEND_CODES).
TABLE_1 = {
    0: Verdict.ACCEPTED,
    -1: Verdict.RETRY,
    -2: Verdict.DISABLE,
    -3: Verdict.DISABLE,
    -4: Verdict.DISABLE,
    -5: Verdict.FAILED,
    -6: Verdict.DISABLE,
    -7: Verdict.FAILED,
    -8: Verdict.DISABLE,
    -9: Verdict.FAILED,
    -10: Verdict.RETRY,
}


def test_every_table_1_code() -> None:
    assert set(SEND_CODES) == set(TABLE_1)
    for code, verdict in TABLE_1.items():
        got, meaning = send_verdict(code)
        assert got is verdict
        assert meaning.isascii()
    assert send_verdict(-42)[0] is Verdict.RETRY
    assert send_verdict(7)[0] is Verdict.RETRY


# --- numbers, text, time, encoding of the query ------------------------------------------------


def test_number_format() -> None:
    assert to_smsgo_number("+886912345678") == "0912345678"
    assert to_smsgo_number("+8613681912700") == "+8613681912700"
    assert to_smsgo_number("+886223456789") == "+886223456789"  # a Taipei landline: not mobile
    for bad in (
        "0912345678",
        "+88691234567",
        "+8869123456789",
        "+1",
        "886912345678",
        "+0912345678",
    ):
        with pytest.raises(ValueError, match=r"E\.164|Taiwan"):
            to_smsgo_number(bad)
    assert from_smsgo_number("0988123456") == "+886988123456"
    assert from_smsgo_number("008613681912700") == "+8613681912700"
    assert from_smsgo_number("8613681912700") == "+8613681912700"


@given(st.from_regex(r"\+(8869[0-9]{8}|[1-7][0-9]{7,13})", fullmatch=True))
def test_number_round_trip(e164: str) -> None:
    assert from_smsgo_number(to_smsgo_number(e164)) == e164


@pytest.mark.parametrize(
    ("text", "plan"),
    [
        ("a" * 160, TextPlan("ASCII", 160, long=False, too_long=False)),
        ("a" * 161, TextPlan("LASCII", 161, long=True, too_long=False)),
        ("a" * 330, TextPlan("LASCII", 330, long=True, too_long=False)),
        ("a" * 331, TextPlan("LASCII", 331, long=True, too_long=True)),
        ("[" * 80, TextPlan("ASCII", 160, long=False, too_long=False)),  # GSM escapes count 2
        ("[" * 81, TextPlan("LASCII", 162, long=True, too_long=False)),
        ("`", TextPlan("UCS2", 1, long=False, too_long=False)),  # ASCII, not GSM 7-bit
        ("é", TextPlan("UCS2", 1, long=False, too_long=False)),
        ("簡" * 70, TextPlan("UCS2", 70, long=False, too_long=False)),
        ("簡" * 71, TextPlan("LUCS2", 71, long=True, too_long=False)),
        ("簡" * 330, TextPlan("LUCS2", 330, long=True, too_long=False)),
        ("簡" * 331, TextPlan("LUCS2", 331, long=True, too_long=True)),
        ("😀" * 35, TextPlan("UCS2", 70, long=False, too_long=False)),  # two UTF-16 units each
        ("😀" * 36, TextPlan("LUCS2", 72, long=True, too_long=False)),
    ],
)
def test_plan_text(text: str, plan: TextPlan) -> None:
    assert plan_text(text) == plan


def test_dlvtime_is_taiwan_time() -> None:
    # 2024-05-01 00:30:00 UTC is 08:30 in Taipei.
    assert format_dlvtime(1714523400.0) == "2024/05/01 08:30:00"


def test_encode_query() -> None:
    query = encode_query([("dstaddr", "0912345678,+8613681912700"), ("smbody", "簡訊 a+b&c=\n")])
    assert query == (
        "dstaddr=0912345678,%2B8613681912700&smbody=%E7%B0%A1%E8%A8%8A%20a%2Bb%26c%3D%0A"
    )


# --- properties: only ParseError escapes the parsers ---------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "msgid=",
        "statuscode=",
        "statusstr=",
        "point=",
        "0",
        "-2",
        "1504280910499665",
        "|",
        "\r\n",
        "\n",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"',
        '"result"',
        '"results"',
        '"statusCode"',
        '"point"',
        "DELIVRD",
        "0988123456",
        "1e999",
        "NaN",
        "<",
        "\ufeff",
        "簡",
    ]
)
STRUCTURED = st.lists(FRAGMENTS, max_size=40).map("".join)
PARSERS: list[Callable[[Any], Any]] = [parse_send_reply, parse_query, parse_balance, parse_cancel]


@settings(max_examples=150, deadline=None)
@given(body=st.one_of(st.text(), st.binary(), STRUCTURED, STRUCTURED.map(str.encode)))
def test_reply_parsers_raise_only_parse_error(body: str | bytes) -> None:
    for parse in PARSERS:
        try:
            parse(body)
        except ParseError:
            pass


QUERY_KEYS = st.sampled_from(
    ["msgid", "statuscode", "statusstr", "dstaddr", "srcaddr", "smbody", "encoding", "timestamp"]
)
QUERY_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["1504280910499665", "0912345678", " 8613681912700", "DELIVRD", "0", "UCS2"]),
)


@settings(max_examples=150, deadline=None)
@given(query=st.dictionaries(st.one_of(QUERY_KEYS, st.text(max_size=8)), QUERY_VALUES))
def test_push_parsers_raise_only_parse_error(query: dict[str, str]) -> None:
    for parse in (parse_report, parse_reply):
        try:
            parse(query)
        except ParseError:
            pass


# --- the client against the simulator ------------------------------------------------------------


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


async def test_send_domestic_and_international(sim: RunningSmsgoSim, receiver: Receiver) -> None:
    report_url = f"{receiver.url}/hooks/smsgo/report?token={TOKEN}"
    reply_url = f"{receiver.url}/hooks/smsgo/reply?token={TOKEN}"
    client = make_provider(sim, report_url=report_url, reply_url=reply_url)
    try:
        results = await client.send(["+886912345678", "+8613681912700"], "hello smsgo")
    finally:
        await client.close()
    assert [r.verdict for r in results] == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    assert [r.number for r in results] == ["+886912345678", "+8613681912700"]
    msgid = results[0].upstream_id
    assert msgid is not None and results[1].upstream_id == msgid
    request = sim.sim.requests[-1]
    assert request["side"] == "primary" and request["operation"] == "sendsms.aspx"
    assert request["params"] == {
        "username": "goipd",
        "dstaddr": "0912345678,+8613681912700",
        "encoding": "ASCII",
        "smbody": "hello smsgo",
        "rtype": "JSON",
        "response": report_url,
        "replyurl": reply_url,
    }
    assert request["raw"]["dstaddr"] == "0912345678,%2B8613681912700"  # the document's %2b
    assert "password" not in request["raw"]
    message = sim.sim.messages[msgid]
    assert message.numbers == ["0912345678", "+8613681912700"] and message.text == "hello smsgo"


async def test_batches_of_fifty(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    numbers = [f"+8869{n:08d}" for n in range(120)]
    results = await provider.send([*numbers, numbers[0]], "batch")
    assert provider.max_batch == 50
    assert [len(s["dstaddr"]) for s in sim.sim.sends] == [50, 50, 20]
    assert [r.number for r in results] == [*numbers, numbers[0]]
    assert all(r.verdict is Verdict.ACCEPTED for r in results)
    ids = [s["msgid"] for s in sim.sim.sends]
    assert len(set(ids)) == 3
    assert [r.upstream_id for r in results[:120]] == [ids[0]] * 50 + [ids[1]] * 50 + [ids[2]] * 20


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("a" * 160, "ASCII"),
        ("a" * 161, "LASCII"),
        ("x{" * 80, "LASCII"),
        ("`backtick`", "UCS2"),
        ("簡訊測試", "UCS2"),
        ("簡" * 70, "UCS2"),
        ("簡" * 71, "LUCS2"),
        ("簡" * 330, "LUCS2"),
        ("😀" * 36, "LUCS2"),
        ("line one\nline two", "ASCII"),
    ],
)
async def test_encoding_choice_never_truncates(
    sim: RunningSmsgoSim, provider: SmsgoProvider, text: str, encoding: str
) -> None:
    [result] = await provider.send(["+886912345678"], text)
    assert result.verdict is Verdict.ACCEPTED
    sent = sim.sim.sends[-1]
    assert (sent["encoding"], sent["smbody"], sent["truncated"]) == (encoding, text, False)
    assert sim.sim.messages[result.upstream_id or ""].text == text


async def test_too_long_and_empty_texts_fail_without_a_call(
    sim: RunningSmsgoSim, provider: SmsgoProvider
) -> None:
    [long] = await provider.send(["+886912345678"], "簡" * 331)
    assert (long.verdict, long.code) == (Verdict.FAILED, "text_too_long")
    assert "330" in (long.meaning or "")
    [empty] = await provider.send(["+886912345678"], "")
    assert (empty.verdict, empty.code) == (Verdict.FAILED, "empty_text")
    [broken] = await provider.send(["+886912345678"], "half an emoji \ud83d")
    assert (broken.verdict, broken.code) == (Verdict.FAILED, "invalid_text")
    assert not sim.sim.requests


async def test_long_sms_goes_to_taiwan_only(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    results = await provider.send(["+886912345678", "+8613681912700"], "a" * 200)
    assert results[0].verdict is Verdict.ACCEPTED
    assert (results[1].verdict, results[1].code) == (Verdict.FAILED, "long_sms_international")
    assert sim.sim.sends[-1]["dstaddr"] == ["0912345678"]


async def test_invalid_numbers_fail_locally(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    results = await provider.send(["+88691234", "0912345678", "+886912345678"], "hi")
    assert [(r.verdict, r.code) for r in results] == [
        (Verdict.FAILED, "invalid_number"),
        (Verdict.FAILED, "invalid_number"),
        (Verdict.ACCEPTED, "0"),
    ]
    assert sim.sim.sends[-1]["dstaddr"] == ["0912345678"]


async def test_replyurl_only_with_single_sms(sim: RunningSmsgoSim) -> None:
    client = make_provider(sim, report_url="http://127.0.0.1:1/r", reply_url="http://127.0.0.1:1/y")
    try:
        await client.send(["+886912345678"], "short")
        assert sim.sim.sends[-1]["replyurl"] == "http://127.0.0.1:1/y"
        await client.send(["+886912345678"], "a" * 200)
        # "當 encoding 設為 BIG5/ASCII/UCS2 才可以使用這個 tag"
        assert sim.sim.sends[-1]["replyurl"] is None
        assert sim.sim.sends[-1]["response"] == "http://127.0.0.1:1/r"
    finally:
        await client.close()


async def test_replyurl_over_300_is_dropped_with_one_warning(sim: RunningSmsgoSim) -> None:
    reply_url = f"http://127.0.0.1:1/hooks/smsgo/reply?token={'t' * 300}"
    with capture_logs() as logs:
        client = make_provider(sim, reply_url=reply_url)
        try:
            await client.send(["+886912345678"], "one")
            await client.send(["+886912345678"], "two")
        finally:
            await client.close()
    assert all(s["replyurl"] is None for s in sim.sim.sends)
    warnings = [e for e in logs if e["event"] == "replyurl_dropped"]
    assert len(warnings) == 1 and warnings[0]["length"] == len(reply_url)
    assert "token" not in repr(logs)


async def test_scheduled_send_status_and_cancel(
    sim: RunningSmsgoSim, provider: SmsgoProvider
) -> None:
    send_at = time.time() + 3600
    [result] = await provider.send(["+886912345678"], "later", send_at=send_at)
    msgid = result.upstream_id or ""
    assert sim.sim.sends[-1]["dlvtime"] == format_dlvtime(send_at)
    points = sim.sim.points
    [status] = await provider.status([(msgid, "+886912345678")])
    assert (status.state, status.code, status.number) == (
        State.QUEUED,
        "SCHEDULED",
        "+886912345678",
    )
    assert await provider.cancel(msgid) is True
    assert sim.sim.points == points + 1
    [status] = await provider.status([(msgid, "+886912345678")])
    assert (status.state, status.code) == (State.FAILED, "DELETED")
    assert await provider.cancel(msgid) is False  # nothing left to cancel
    assert await provider.cancel("not-an-id") is False


async def test_send_at_in_the_past_sends_now(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    await provider.send(["+886912345678"], "now", send_at=time.time() - 5)
    assert sim.sim.sends[-1]["dlvtime"] is None


async def test_wrong_password_disables(sim: RunningSmsgoSim) -> None:
    client = make_provider(sim, password="wrong-password")
    try:
        [result] = await client.send(["+886912345678"], "hi")
        assert (result.verdict, result.code) == (Verdict.DISABLE, "-2")
        assert "authorization" in (result.meaning or "")
        with pytest.raises(UpstreamError) as balance_error:
            await client.balance()
        assert balance_error.value.reason is ErrorReason.AUTH
        with pytest.raises(UpstreamError) as status_error:
            await client.status([("1504280910500001", "+886912345678")])
        assert status_error.value.reason is ErrorReason.AUTH
        with pytest.raises(UpstreamError) as cancel_error:
            await client.cancel("1504280910500001")
        assert cancel_error.value.reason is ErrorReason.AUTH
    finally:
        await client.close()
    # A valid smsgo answer is not a reason to ask the backup.
    assert {r["side"] for r in sim.sim.requests} == {"primary"}


async def test_api_key_instead_of_password() -> None:
    running = await start_smsgo_sim(password="login-password", api_key="api-key-0001")
    client = make_provider(running, password="api-key-0001")
    try:
        [result] = await client.send(["+886912345678"], "hi")
        assert result.verdict is Verdict.ACCEPTED
    finally:
        await client.close()
        await running.close()


async def test_no_credit_disables(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    sim.sim.set_account(points=1)
    results = await provider.send(["+886912345678", "+886912345679"], "two numbers, one point")
    assert {(r.verdict, r.code) for r in results} == {(Verdict.DISABLE, "-8")}
    assert not sim.sim.messages
    await sim.sim.set_fault("no_credit")
    [result] = await provider.send(["+886912345678"], "hi")
    assert (result.verdict, result.code) == (Verdict.DISABLE, "-8")
    assert await provider.balance() == 0.0


@pytest.mark.parametrize("code", sorted(TABLE_1))
async def test_every_status_code_over_http(
    sim: RunningSmsgoSim, provider: SmsgoProvider, code: int
) -> None:
    if code == 0:
        await sim.sim.set_fault("none")
    else:
        await sim.sim.set_fault("code", code=code)
    [result] = await provider.send(["+886912345678"], "hi")
    assert (result.verdict, result.code) == (TABLE_1[code], str(code))
    assert result.meaning == SEND_CODES[code][1]
    assert (result.upstream_id is not None) is (code == 0)


async def test_bad_number_in_a_batch_is_isolated(
    sim: RunningSmsgoSim, provider: SmsgoProvider
) -> None:
    sim.sim.set_account(invalid_numbers=["0912000002"])
    numbers = ["+886912000001", "+886912000002", "+886912000003"]
    results = await provider.send(numbers, "hi")
    assert [(r.verdict, r.code) for r in results] == [
        (Verdict.ACCEPTED, "0"),
        (Verdict.FAILED, "-5"),
        (Verdict.ACCEPTED, "0"),
    ]
    assert results[0].upstream_id != results[2].upstream_id
    assert [s["dstaddr"] for s in sim.sim.sends] == [
        ["0912000001", "0912000002", "0912000003"],
        ["0912000001"],
        ["0912000002"],
        ["0912000003"],
    ]


@pytest.mark.parametrize("mode", ["timeout", "http_500", "html", "truncated", "reset", "down"])
async def test_primary_fault_fails_over_to_backup(sim: RunningSmsgoSim, mode: str) -> None:
    await sim.sim.set_fault(mode, "primary", delay=2.0)
    client = make_provider(sim, timeout="300ms")
    try:
        [result] = await client.send(["+886912345678"], "hi")
        assert result.verdict is Verdict.ACCEPTED
        assert sim.sim.messages[result.upstream_id or ""].side == "backup"
        assert await client.balance() == sim.sim.points
        [status] = await client.status([(result.upstream_id or "", "+886912345678")])
        assert status.upstream_id == result.upstream_id
    finally:
        await client.close()
    sides = [r["side"] for r in sim.sim.requests if r["operation"] == "sendsms.aspx"]
    if mode == "down":
        assert sides == ["backup"]  # the primary never saw the request
    else:
        assert sides == ["primary", "backup"]
    # A cut reply hides a send the primary did carry out: failing over sends it twice
    # (at least once, as the document's advice to resend on the backup implies), and the
    # result says so, for goipd_dispatch_ambiguous_total.
    assert len(sim.sim.messages) == (2 if mode == "truncated" else 1)
    assert result.lost_answers == (1 if mode in ("timeout", "html", "truncated") else 0)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("timeout", ErrorReason.TIMEOUT),
        ("http_500", ErrorReason.HTTP_STATUS),
        ("html", ErrorReason.PARSE),
        ("truncated", ErrorReason.PARSE),
        ("reset", ErrorReason.CONNECT),
        ("down", ErrorReason.CONNECT),
    ],
)
async def test_both_down_means_retry(sim: RunningSmsgoSim, mode: str, reason: ErrorReason) -> None:
    await sim.sim.set_fault(mode, delay=2.0)
    client = make_provider(sim, timeout="300ms")
    with capture_logs() as logs:
        try:
            results = await client.send(["+886912345678", "+8613681912700"], "hi")
            with pytest.raises(UpstreamError) as balance_error:
                await client.balance()
            with pytest.raises(UpstreamError) as status_error:
                await client.status([("1504280910500001", "+886912345678")])
            with pytest.raises(UpstreamError) as cancel_error:
                await client.cancel("1504280910500001")
        finally:
            await client.close()
    assert {(r.verdict, r.code) for r in results} == {(Verdict.RETRY, reason.value)}
    lost = 2 if reason in (ErrorReason.TIMEOUT, ErrorReason.PARSE) else 0
    assert {r.lost_answers for r in results} == {lost}
    meaning = results[0].meaning or ""
    assert "primary" in meaning and "backup" in meaning
    for error in (balance_error.value, status_error.value, cancel_error.value):
        assert error.reason is reason
        assert PASSWORD not in str(error)
    assert PASSWORD not in repr(logs) and PASSWORD not in meaning
    assert [e["endpoint"] for e in logs if e["event"] == "endpoint_failed"][:2] == [
        "primary",
        "backup",
    ]


async def test_slow_primary_within_timeout_is_used(sim: RunningSmsgoSim) -> None:
    await sim.sim.set_fault("slow", "primary", delay=0.1)
    client = make_provider(sim, timeout="2s")
    try:
        [result] = await client.send(["+886912345678"], "hi")
    finally:
        await client.close()
    assert result.verdict is Verdict.ACCEPTED
    assert [r["side"] for r in sim.sim.requests] == ["primary"]


async def test_primary_auth_fault_is_not_failed_over(
    sim: RunningSmsgoSim, provider: SmsgoProvider
) -> None:
    await sim.sim.set_fault("auth", "primary")
    [result] = await provider.send(["+886912345678"], "hi")
    assert (result.verdict, result.code) == (Verdict.DISABLE, "-2")
    assert [r["side"] for r in sim.sim.requests] == ["primary"]


async def test_status_single_and_bulk(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    sim.sim.set_dlr(status={"0912000002": "UNDELIV", "+886912000003": "ABSENT"})
    numbers = ["+886912000001", "+886912000002", "+886912000003", "+8613681912700"]
    results = await provider.send(numbers, "hi")
    msgid = results[0].upstream_id or ""
    await eventually(lambda: "ENROUTE" not in sim.sim.messages[msgid].states.values())
    [single] = await provider.status([(msgid, "+886912000002")])
    assert single == CloudStatus(
        msgid, "+886912000002", State.FAILED, "UNDELIV", STATUS_WORDS["UNDELIV"][1]
    )
    assert sim.sim.requests[-1]["operation"] == "query.asp"
    assert sim.sim.requests[-1]["params"]["rtype"] == "JSON"
    bulk = await provider.status([(msgid, n) for n in numbers] + [("nonsense", numbers[0])])
    assert sim.sim.requests[-1]["operation"] == "queryBulk.asp"
    assert {(s.number, s.state, s.code) for s in bulk} == {
        ("+886912000001", State.DELIVERED, "DELIVRD"),
        ("+886912000002", State.FAILED, "UNDELIV"),
        ("+886912000003", State.FAILED, "ABSENT"),
        ("+8613681912700", State.DELIVERED, "DELIVRD"),
    }
    assert await provider.status([("1504280910599999", "+886912000001")]) == []  # unknown id
    requests = len(sim.sim.requests)
    assert await provider.status([("x", "+886912000001"), (msgid, "bad")]) == []
    assert len(sim.sim.requests) == requests  # nothing worth asking


async def test_status_bulk_is_chunked(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    numbers = [f"+8869{n:08d}" for n in range(60)]
    results = await provider.send(numbers, "hi")
    statuses = await provider.status([(r.upstream_id or "", r.number) for r in results])
    assert len(statuses) == 60
    assert [r["operation"] for r in list(sim.sim.requests)[-2:]] == [
        "queryBulk.asp",
        "queryBulk.asp",
    ]


async def test_balance(sim: RunningSmsgoSim, provider: SmsgoProvider) -> None:
    assert await provider.balance() == 10_000.0
    await provider.send(["+886912345678", "+886912345679"], "a" * 200)  # 2 numbers x 2 parts
    assert await provider.balance() == 9_996.0
    assert sim.sim.requests[-1]["params"] == {"username": "goipd", "rtype": "JSON"}
