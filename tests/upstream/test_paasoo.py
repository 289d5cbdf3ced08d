"""PaaSoo: the document's examples through the parsers, and the client against the simulator
over loopback HTTP for every operation, error form and fault mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from goipd.model import State
from goipd.sim.paasoo import RunningPaasooSim, start_paasoo_sim
from goipd.upstream.cloud import CloudProvider, CloudSendResult, CloudStatus, Verdict
from goipd.upstream.errors import ParseError
from goipd.upstream.http import NOT_SENT
from goipd.upstream.paasoo import (
    DLR_CODES,
    DLR_STATUS,
    MAX_BATCH,
    PaasooProvider,
    SendReply,
    build_send_query,
    classify_send,
    parse_report,
    parse_send_reply,
    to_paasoo_number,
)
from tests.helpers.cloud import TRANSPORT_FAULTS, refused_url, serve_routes
from tests.helpers.paasoo import DOC_FAILURE, KEY, SECRET, Receiver, make_provider, send_one

# The document's two replies, verbatim (the failure one with its misplaced quote).
DOC_SUCCESS = '{"status":"0","messageid":"052804b7368321"}'

DOC_DLR = (
    "type=dlr&messageid=xxxxx&to=6588888888&status=0&statuscode=delivered&errcode=1&network=52099"
)


# --- parsers ------------------------------------------------------------------------------------


def test_send_reply_document_success() -> None:
    assert parse_send_reply(DOC_SUCCESS) == SendReply("0", "052804b7368321", None)
    assert parse_send_reply(DOC_SUCCESS.encode()) == SendReply("0", "052804b7368321", None)


def test_send_reply_document_failure_with_broken_quote() -> None:
    reply = parse_send_reply(DOC_FAILURE.encode())
    assert reply == SendReply("401", None, "illegal secret.")
    assert classify_send(reply) == (
        Verdict.DISABLE,
        "wrong account key or secret (illegal secret.)",
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '{"status_code":"illegal secret.","status":"401"}',
            SendReply("401", None, "illegal secret."),
        ),
        ('{"status":0,"messageid":"abc123"}', SendReply("0", "abc123", None)),
        ('\ufeff {"status": "0", "messageid": "m1"} \n', SendReply("0", "m1", None)),
        (
            '{"status_code":"ip not allowed.,"status":"404"}',
            SendReply("404", None, "ip not allowed."),
        ),
        (
            '{"status":"400","status_code":"invalid number."}',
            SendReply("400", None, "invalid number."),
        ),
        ('{"status":"00","messageid":"x"}', SendReply("0", "x", None)),
    ],
)
def test_send_reply_forms(body: str, expected: SendReply) -> None:
    assert parse_send_reply(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "<html><body>Sign in</body></html>",
        '{"status":"0","messageid":"0528',  # truncated
        '{"status":"0"}',  # accepted without an id
        '{"messageid":"x"}',  # no status
        '{"status":"ok","messageid":"x"}',
        '{"status":true}',
        '[{"status":"0"}]',
        '{"status":"0","messageid":"has space"}',
        '{"status":["0"]}',
    ],
)
def test_send_reply_rejects(body: str) -> None:
    with pytest.raises(ParseError):
        parse_send_reply(body)


def test_send_reply_rejects_non_utf8() -> None:
    with pytest.raises(ParseError, match="UTF-8"):
        parse_send_reply(b'{"status":"\xff"}')


@pytest.mark.parametrize(
    ("status", "status_code", "verdict", "meaning"),
    [
        ("0", None, Verdict.ACCEPTED, "accepted"),
        ("400", "missing parameter to.", Verdict.FAILED, "bad request"),
        ("401", None, Verdict.DISABLE, "wrong account key or secret"),
        ("403", "insufficient balance.", Verdict.DISABLE, "insufficient balance"),
        ("403", "余额不足", Verdict.DISABLE, "insufficient balance"),
        ("403", "number in blacklist.", Verdict.FAILED, "black/white list"),
        ("403", "白名单限制", Verdict.FAILED, "black/white list"),
        ("403", None, Verdict.DISABLE, "use restricted"),
        ("404", "ip not allowed.", Verdict.DISABLE, "IP address not allowed"),
        ("500", None, Verdict.RETRY, "not in the PaaSoo document"),
    ],
)
def test_send_status_table(
    status: str, status_code: str | None, verdict: Verdict, meaning: str
) -> None:
    got_verdict, got_meaning = classify_send(SendReply(status, None, status_code))
    assert got_verdict is verdict
    assert meaning in got_meaning


def _query(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split("&"))


def test_report_document_example() -> None:
    assert parse_report(_query(DOC_DLR)) == CloudStatus(
        upstream_id="xxxxx",
        number="+6588888888",
        state=State.DELIVERED,
        code="0",
        meaning="delivered",
    )


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        ("401", "no permission"),
        ("402", "illegal (blacklisted) keyword"),
        ("403", "no whitelisted keyword"),
        ("404", "another reason"),
        ("501", "other system error"),
    ],
)
def test_report_failure_statuses(status: str, meaning: str) -> None:
    query = {**_query(DOC_DLR), "status": status, "statuscode": "", "errcode": "7"}
    report = parse_report(query)
    assert report.state is State.FAILED
    assert report.code == status
    assert meaning in report.meaning
    assert "errcode 7" in report.meaning


@pytest.mark.parametrize(
    ("statuscode", "english"),
    [
        ("Unknown", "unknown error"),
        ("Absent Subscriber Temporary", "out of coverage or switched off"),
        ("Absent Subscriber Permanent", "does not exist"),
        ("Call barred by user", "refuses messages"),
        ("Anti-Spam Rejection", "filtered by the carrier"),
        ("Network Error", "carrier network error"),
        ("Illegal Number", "invalid number"),
        ("Unroutable", "cannot deliver"),
        ("General Error", "carrier-specific"),
    ],
)
def test_report_404_code_table(statuscode: str, english: str) -> None:
    report = parse_report({**_query(DOC_DLR), "status": "404", "statuscode": statuscode})
    assert report.state is State.FAILED
    assert english in report.meaning
    assert f"[{statuscode}]" in report.meaning


def test_report_tables_cover_the_document() -> None:
    assert set(DLR_STATUS) == {"0", "401", "402", "403", "404", "501"}
    assert len(DLR_CODES) == 9


def test_report_variants() -> None:
    base = _query(DOC_DLR)
    assert parse_report({**base, "to": "+6588888888"}).number == "+6588888888"
    without_to = {k: v for k, v in base.items() if k != "to"}
    assert parse_report(without_to).number is None
    unknown = parse_report({**base, "status": "777", "statuscode": "odd"})
    assert unknown.state is State.FAILED
    assert "777" in unknown.meaning


@pytest.mark.parametrize(
    "change",
    [
        {"type": "mo"},
        {"type": None},
        {"messageid": None},
        {"messageid": ""},
        {"messageid": "x" * 65},
        {"status": None},
        {"status": "delivered"},
        {"to": "65-8888"},
        {"statuscode": "x" * 500},
    ],
)
def test_report_rejects(change: dict[str, str | None]) -> None:
    query = {**_query(DOC_DLR), **change}
    with pytest.raises(ParseError):
        parse_report({k: v for k, v in query.items() if v is not None})


def test_number_format() -> None:
    assert to_paasoo_number("+6588888888") == "6588888888"
    assert to_paasoo_number("+8613800138000") == "8613800138000"
    for bad in ("6588888888", "+0658888", "+12", "+6588 888888", "+1234567890123456"):
        assert to_paasoo_number(bad) is None


def test_send_query_is_form_encoded() -> None:
    query = build_send_query("k", "s&=", ["6588888888", "6591234567"], "Hello world 你好")
    assert query == (
        "key=k&secret=s%26%3D&to=6588888888,6591234567&text=Hello+world+%E4%BD%A0%E5%A5%BD"
    )
    with pytest.raises(ValueError, match="50"):
        build_send_query("k", "s", ["65"] * (MAX_BATCH + 1), "x")


@given(st.text(max_size=300))
def test_send_reply_only_raises_parse_error_on_text(text: str) -> None:
    try:
        parse_send_reply(text)
    except ParseError:
        pass


@given(st.binary(max_size=300))
def test_send_reply_only_raises_parse_error_on_bytes(body: bytes) -> None:
    try:
        parse_send_reply(body)
    except ParseError:
        pass


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))


@given(
    st.dictionaries(
        st.sampled_from(["status", "messageid", "status_code", "x"]),
        st.one_of(_json_scalar, st.lists(_json_scalar, max_size=2)),
    )
)
def test_send_reply_only_raises_parse_error_on_json(data: dict[str, Any]) -> None:
    try:
        reply = parse_send_reply(json.dumps(data))
    except ParseError:
        return
    assert reply.status.lstrip("-").isdigit()


_report_keys = st.sampled_from(
    ["type", "messageid", "to", "status", "statuscode", "errcode", "network", "other"]
)


@given(st.dictionaries(_report_keys, st.text(max_size=40)))
def test_report_only_raises_parse_error(query: dict[str, str]) -> None:
    try:
        parse_report(query)
    except ParseError:
        pass


@given(
    st.fixed_dictionaries(
        {
            "type": st.just("dlr"),
            "messageid": st.from_regex(r"[0-9a-f]{1,20}", fullmatch=True),
            "status": st.sampled_from(["0", "401", "402", "403", "404", "501", "9"]),
        },
        optional={
            "to": st.from_regex(r"[0-9]{5,15}", fullmatch=True),
            "statuscode": st.text(max_size=30),
            "errcode": st.text(max_size=8),
        },
    )
)
def test_report_accepts_plausible_reports(query: dict[str, str]) -> None:
    report = parse_report(query)
    assert report.state is (State.DELIVERED if query["status"] == "0" else State.FAILED)
    assert report.upstream_id == query["messageid"]


# --- client against the simulator ---------------------------------------------------------------


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


def _assert_protocol(provider: CloudProvider) -> None:
    assert provider.name == "paasoo"
    assert provider.max_batch == 50


async def test_send_accepts_and_maps_one_messageid_to_every_number(
    running: RunningPaasooSim, provider: PaasooProvider, receiver: Receiver
) -> None:
    _assert_protocol(provider)
    running.sim.set_dlr(client_url=receiver.url)
    text = "Hello 世界 👋 & = + %"
    results = await provider.send(["+6588888888", "+8613800138000"], text)
    assert [r.number for r in results] == ["+6588888888", "+8613800138000"]
    assert {r.verdict for r in results} == {Verdict.ACCEPTED}
    messageid = running.sim.sent[0]["messageid"]
    assert [r.upstream_id for r in results] == [messageid, messageid]
    assert running.sim.sent[0]["to"] == ["6588888888", "8613800138000"]
    assert running.sim.sent[0]["text"] == text
    assert running.sim.balance == 10_000 - 2
    await running.sim.settle()
    # The simulator pushed one real GET per number, parsed by goipd's parser.
    assert sorted((r.upstream_id, r.number, r.state) for r in receiver.reports) == [
        (messageid, "+6588888888", State.DELIVERED),
        (messageid, "+8613800138000", State.DELIVERED),
    ]
    assert all(raw["token"] == "hook-token-123" for raw in receiver.raw)
    assert all(raw["network"] == "52099" for raw in receiver.raw)
    assert [d["outcome"] for d in running.sim.dlrs] == ["ok", "ok"]


async def test_dlr_statuses_per_number_and_keywords(
    running: RunningPaasooSim, provider: PaasooProvider, receiver: Receiver
) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.put(
            f"{running.url}/_control/dlr",
            json={
                "client_url": receiver.url,
                "numbers": {
                    "6591234567": {"status": "404", "statuscode": "Absent Subscriber Permanent"}
                },
            },
        )
        assert resp.status == 200
        resp = await http.put(
            f"{running.url}/_control/account", json={"blacklist_keywords": ["casino"]}
        )
        assert resp.status == 200
    await provider.send(["+6588888888", "+6591234567"], "hi")
    await provider.send(["+6588888888"], "win at the casino")
    await running.sim.settle()
    by_key = {(r.number, r.code): r for r in receiver.reports}
    assert by_key[("+6588888888", "0")].state is State.DELIVERED
    absent = by_key[("+6591234567", "404")]
    assert absent.state is State.FAILED
    assert "does not exist" in absent.meaning
    assert by_key[("+6588888888", "402")].state is State.FAILED


async def test_batches_of_fifty_in_order(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    numbers = [f"+6581{i:06d}" for i in range(120)]
    results = await provider.send(numbers, "bulk")
    assert [r.number for r in results] == numbers
    assert [len(call["to"]) for call in running.sim.sent] == [50, 50, 20]
    ids = [call["messageid"] for call in running.sim.sent]
    assert len(set(ids)) == 3
    assert [r.upstream_id for r in results] == [ids[0]] * 50 + [ids[1]] * 50 + [ids[2]] * 20


async def test_invalid_numbers_fail_before_sending(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    results = await provider.send(["0912345678", "+6588888888", "+12"], "hi")
    assert [r.verdict for r in results] == [Verdict.FAILED, Verdict.ACCEPTED, Verdict.FAILED]
    assert results[0].code == "400"
    assert "E.164" in (results[0].meaning or "")
    assert running.sim.sent[0]["to"] == ["6588888888"]
    only_bad = await provider.send(["12345"], "hi")
    assert only_bad[0].verdict is Verdict.FAILED
    assert running.sim.counters["requests"] == 1


async def test_wrong_secret_disables(running: RunningPaasooSim) -> None:
    client = make_provider(running.url, secret="not-the-secret")
    try:
        result = await send_one(client)
    finally:
        await client.close()
    assert result.verdict is Verdict.DISABLE
    assert result.code == "401"
    assert result.meaning == "wrong account key or secret (illegal secret.)"
    assert running.sim.counters["status_401"] == 1


@pytest.mark.parametrize("quirks", [True, False])
@pytest.mark.parametrize("error_http_status", [False, True])
async def test_error_forms(
    running: RunningPaasooSim, provider: PaasooProvider, quirks: bool, error_http_status: bool
) -> None:
    running.sim.quirks = quirks
    running.sim.error_http_status = error_http_status
    running.sim.set_account(allowed_ips=["192.0.2.7"])
    result = await send_one(provider)
    assert (result.verdict, result.code) == (Verdict.DISABLE, "404")
    assert "IP address not allowed" in (result.meaning or "")
    running.sim.set_account(allowed_ips=None, blacklist_numbers=["6588888888"])
    result = await send_one(provider)
    assert (result.verdict, result.code) == (Verdict.FAILED, "403")
    running.sim.set_account(blacklist_numbers=[], balance=0)
    result = await send_one(provider)
    assert (result.verdict, result.code) == (Verdict.DISABLE, "403")
    assert "insufficient balance" in (result.meaning or "")
    running.sim.set_account(balance=5)
    result = await send_one(provider, text="")
    assert (result.verdict, result.code) == (Verdict.FAILED, "400")
    assert (await send_one(provider)).verdict is Verdict.ACCEPTED


async def test_balance_short_of_the_batch_disables(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    running.sim.set_account(balance=1)
    results = await provider.send(["+6588888888", "+6591234567"], "hi")
    assert {(r.verdict, r.code) for r in results} == {(Verdict.DISABLE, "403")}


async def test_refusal_stops_the_remaining_batches(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    running.sim.set_account(balance=60)
    results = await provider.send([f"+6581{i:06d}" for i in range(120)], "bulk")
    assert [r.verdict for r in results] == [Verdict.ACCEPTED] * 50 + [Verdict.DISABLE] * 70
    assert running.sim.counters["requests"] == 2


@pytest.mark.parametrize(("mode", "code"), [("http_500", "http_status"), ("reset", "connect")])
async def test_numbers_after_a_call_without_answer_are_not_sent(
    running: RunningPaasooSim, provider: PaasooProvider, mode: str, code: str
) -> None:
    running.sim.set_fault(mode)
    results = await provider.send([f"+6581{i:06d}" for i in range(120)], "bulk")
    assert [(r.verdict, r.code) for r in results] == [(Verdict.RETRY, code)] * 50 + [
        (Verdict.RETRY, NOT_SENT)
    ] * 70
    assert results[50].meaning is not None
    assert results[50].meaning.startswith(f"not sent: an earlier call of this send failed ({code}")
    assert running.sim.counters["http_requests"] == 1


@pytest.mark.parametrize(
    ("mode", "verdict", "code"),
    [
        ("auth", Verdict.DISABLE, "401"),
        ("no_credit", Verdict.DISABLE, "403"),
        ("restricted", Verdict.FAILED, "403"),
        ("ip_denied", Verdict.DISABLE, "404"),
        *TRANSPORT_FAULTS,
    ],
)
async def test_fault_modes(
    running: RunningPaasooSim, provider: PaasooProvider, mode: str, verdict: Verdict, code: str
) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.put(f"{running.url}/_control/fault", json={"mode": mode})
        assert (await resp.json())["mode"] == mode
    results = await provider.send(["+6588888888", "+6591234567"], "hi")
    assert [(r.number, r.verdict, r.code) for r in results] == [
        ("+6588888888", verdict, code),
        ("+6591234567", verdict, code),
    ]
    assert all(r.meaning for r in results)
    # A truncated reply is the one fault where PaaSoo did take the message: the fate is unknown
    # to goipd, which retries (and may duplicate), as for a timeout.
    assert len(running.sim.sent) == (1 if mode == "truncated" else 0)
    # A list refusal of the call is asked again per half, to find the one number refused.
    assert running.sim.counters["http_requests"] == (3 if mode == "restricted" else 1)


async def test_slow_answer_within_the_timeout(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    running.sim.set_fault("slow", delay=0.2)
    assert (await send_one(provider)).verdict is Verdict.ACCEPTED


async def test_timeout(running: RunningPaasooSim) -> None:
    running.sim.set_fault("timeout", delay=1.0)
    client = make_provider(running.url, timeout="200ms")
    try:
        result = await send_one(client)
    finally:
        await client.close()
    assert (result.verdict, result.code) == (Verdict.RETRY, "timeout")
    assert result.meaning == "send: no reply within 0.2s"


async def test_connection_refused() -> None:
    client = make_provider(refused_url())
    try:
        result = await send_one(client)
    finally:
        await client.close()
    assert (result.verdict, result.code) == (Verdict.RETRY, "connect")


async def test_operations_the_document_lacks(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    assert await provider.status([("052804b7368321", "+6588888888")]) == []
    assert await provider.balance() is None
    assert await provider.cancel("052804b7368321") is False
    assert running.sim.counters["requests"] == 0


async def test_secrets_stay_out_of_results_and_logs(running: RunningPaasooSim) -> None:
    client = make_provider(running.url, secret="not-the-secret")
    outcomes: list[CloudSendResult] = []
    with capture_logs() as logs:
        try:
            for mode in ("none", "http_500", "html", "reset"):
                running.sim.set_fault(mode)
                outcomes.extend(await client.send(["+6588888888"], "hi"))
        finally:
            await client.close()
    shown = repr(outcomes) + repr(logs)
    assert "not-the-secret" not in shown
    assert SECRET not in shown
    assert any(log["event"] == "provider_send_refused" for log in logs)
    assert any(log["event"] == "provider_send_failed" for log in logs)


async def test_session_is_lazy_and_closed(running: RunningPaasooSim) -> None:
    client = make_provider(running.url)
    assert client._session is None
    await send_one(client)
    session = client._session
    assert session is not None
    await client.close()
    assert session.closed
    assert (await send_one(client)).verdict is Verdict.ACCEPTED
    await client.close()


async def test_one_refused_number_does_not_fail_the_others_of_its_call(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    # PaaSoo answers 403 for the whole call when one number is blacklisted: goipd halves the
    # call until the number is alone, and the other 49 go out.
    numbers = [f"+6581{i:06d}" for i in range(50)]
    running.sim.set_account(blacklist_numbers=["6581000017"])
    results = await provider.send(numbers, "bulk")
    refused = [r.number for r in results if r.verdict is Verdict.FAILED]
    assert refused == ["+6581000017"]
    assert all(r.verdict is Verdict.ACCEPTED for r in results if r.number != "+6581000017")
    assert {r.number for r in results} == set(numbers)
    sent = [n for call in running.sim.sent for n in call["to"]]
    assert len(sent) == len(set(sent)) == 49  # nobody twice
    # One bad number among 50 costs a call per halving: 1 + 2 * log2(50), rounded up.
    assert running.sim.counters["requests"] <= 13


async def test_a_refusal_of_the_text_is_not_split(
    running: RunningPaasooSim, provider: PaasooProvider
) -> None:
    results = await provider.send([f"+6581{i:06d}" for i in range(10)], "")
    assert {(r.verdict, r.code) for r in results} == {(Verdict.FAILED, "400")}
    assert running.sim.counters["requests"] == 1
