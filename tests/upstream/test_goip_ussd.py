"""USSD through the SMS Server's en/ussd.php: the reply parser on replies as v1.28.4 prints them
(escaped answers, ERROR forms, the login page, PHP diagnostics), the balance reader, and the
client against the simulator over loopback HTTP (one request per server at a time, spaced;
failures as typed reasons; credentials never in an error or a log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from goipd.sim.goip import RunningSimulator
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip import DatabaseFault
from goipd.upstream.goip_ussd import (
    BalanceUnreadable,
    BalanceUnreadableError,
    LoginPage,
    RelayError,
    UssdClient,
    compile_balance_pattern,
    parse_balance,
    parse_ussd_reply,
)
from tests.helpers.cloud import refused_url
from tests.helpers.simulator import control

PASSWORD = "s3cret-pw+x"
Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]


def mysql_escaped(text: str) -> str:
    """What mysql_real_escape_string makes of a text (the server escapes the answer so)."""
    table = {"\\": "\\\\", "\0": "\\0", "\n": "\\n", "\r": "\\r", "'": "\\'", '"': '\\"'}
    table["\x1a"] = "\\Z"
    return "".join(table.get(char, char) for char in text)


LOGIN_PAGE = """<html>
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<title>SMS Server</title></head>
<body><form name="login" method="post" action="dologin.php">
User: <input type="text" name="username"><br>
Password: <input type="password" name="password"><br>
<input type="submit" value="Login"></form></body></html>
"""


# --- the reply parser ---------------------------------------------------------------------------


def test_an_answer_comes_back_unescaped() -> None:
    reply = 'OK Your balance is NT$123.45.\\nIt\\\'s valid until 2026-12-31, \\"thanks\\"'
    assert parse_ussd_reply(reply) == (
        'Your balance is NT$123.45.\nIt\'s valid until 2026-12-31, "thanks"'
    )


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="@"), max_size=200))
def test_any_answer_round_trips_the_servers_escaping(text: str) -> None:
    assert parse_ussd_reply(("OK " + mysql_escaped(text)).encode()) == text


def test_an_empty_answer_and_the_at_sign_the_server_removed() -> None:
    assert parse_ussd_reply("OK") == ""
    assert parse_ussd_reply("OK ") == ""
    # "Top up at shop@7-11": the server printed it without its @, for good.
    assert parse_ussd_reply("OK Top up at shop7-11") == "Top up at shop7-11"


def test_php_diagnostics_before_and_after_the_answer_are_left_out() -> None:
    before = "<br />\n<b>Notice</b>:  Undefined index: debug in <b>/var/www/goip/en/ussd.php"
    before += "</b> on line <b>3</b><br />\n"
    after = "<br />\n<b>Notice</b>:  Use of undefined constant card_id in <b>x.php</b> on line"
    after += " <b>42</b><br />\n"
    assert parse_ussd_reply(before + "OK Balance 5.00" + after) == "Balance 5.00"
    assert parse_ussd_reply("\ufeffOK Balance 5.00\n") == "Balance 5.00"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("ERROR term no response", ErrorReason.NO_RESPONSE),
        ("ERROR Not find this TERMERROR term no response", ErrorReason.UNKNOWN_LINE),
        ("ERROR Not find this TERM", ErrorReason.UNKNOWN_LINE),
        ("ERROR goipcron no response", ErrorReason.ENGINE_DOWN),
        ("ERROR sendto errorBroken pipe\n", ErrorReason.ENGINE_DOWN),
        ("ERROR USSD send failed!", ErrorReason.DEVICE_ERROR),
        ("ERROR Unknown application", ErrorReason.DEVICE_ERROR),
        ("", ErrorReason.DEVICE_ERROR),
    ],
)
def test_errors_have_their_own_reasons(reply: str, reason: ErrorReason) -> None:
    with pytest.raises(RelayError) as caught:
        parse_ussd_reply(reply)
    assert caught.value.reason is reason


def test_the_login_page_and_a_database_failure() -> None:
    with pytest.raises(LoginPage):
        parse_ussd_reply(LOGIN_PAGE)
    with pytest.raises(DatabaseFault):
        parse_ussd_reply("Bad query: You have an error in your SQL syntax (SELECT ... 'G'1')")


@pytest.mark.parametrize(
    "reply",
    ["<html><body>404 Not Found</body></html>", "OKAY", "cannt find recharge card", "{}"],
)
def test_anything_else_is_a_parse_error(reply: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_ussd_reply(reply)
    assert type(caught.value) is ParseError


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_the_parser_raises_only_its_typed_errors(body: bytes | str) -> None:
    try:
        parse_ussd_reply(body)
    except (ParseError, DatabaseFault):
        pass


# --- balances -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "pattern", "balance"),
    [
        ("Your balance is NT$123.45, valid until 2026-12-31", r"NT\$(?P<balance>[\d.,]+)", 123.45),
        ("Your balance is NT$123.45", r"balance is (\S+)", 123.45),
        ("123.45", r"[\d.]+", 123.45),
        ("Balance: 1,234.50 THB", r"Balance: (?P<balance>\S+)", 1234.5),
        ("Saldo: 1.234,50 EUR", r"Saldo: (?P<balance>\S+)", 1234.5),
        ("Saldo 12,50 EUR", r"Saldo (\S+)", 12.5),
        ("Credit 1,234 MMK", r"Credit (\S+)", 1234.0),
        ("Credit 12.345 KWD", r"Credit (\S+)", 12.345),
        ("Balance 1,234,567", r"Balance (\S+)", 1234567.0),
        ("Guthaben: CHF 1'234.50", r"Guthaben: (.*)", 1234.5),
        ("Balance -5.00 USD, please top up", r"Balance (\S+)", -5.0),
        ("Main account: -NT$3", r"account: (\S+)", -3.0),
        ("餘額為NT$88元", r"餘額為(?P<balance>.+?)元", 88.0),
    ],
)
def test_balances(answer: str, pattern: str, balance: float) -> None:
    assert parse_balance(answer, pattern) == pytest.approx(balance)


def test_the_decimal_mark_can_be_set() -> None:
    assert parse_balance("Rp 12.345", r"Rp (\S+)", decimal=",") == 12345.0
    assert parse_balance("Rp 12.345", r"Rp (\S+)") == pytest.approx(12.345)
    assert parse_balance("1,5", r"\S+", decimal=".") == 15.0
    assert parse_balance("x 3", compile_balance_pattern(r"x (\d)")) == 3.0


@pytest.mark.parametrize(
    ("answer", "pattern", "message"),
    [
        ("Sorry, service unavailable", r"balance (\S+)", "does not match"),
        ("balance", r"balance( \S+)?", "not its balance group"),
        ("balance is unknown", r"balance is (\S+)", "'unknown': no number"),
        ("Balance 1.2.3,4,5", r"Balance (\S+)", "more than once"),
    ],
)
def test_an_unreadable_balance_says_why(answer: str, pattern: str, message: str) -> None:
    with pytest.raises(BalanceUnreadable, match=message):
        parse_balance(answer, pattern)


def test_a_bad_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        compile_balance_pattern(r"balance (\d+")


@settings(max_examples=300)
@given(st.text(max_size=120), st.sampled_from([None, ".", ","]))
def test_the_balance_reader_raises_only_its_typed_error(answer: str, decimal: Any) -> None:
    try:
        value = parse_balance(answer, r"(?P<balance>[-\d.,' ]+)", decimal=decimal)
    except BalanceUnreadable:
        return
    assert value == value and abs(value) != float("inf")


# --- the client against the simulator -----------------------------------------------------------


def spec(**server: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "username": "root",
                "password": PASSWORD,
                "ussd_delay": 0.2,
                "ussd_timeout": 0.4,
                "lines": [
                    {
                        "line_id": "G101",
                        "ussd": {"*101#": "Your balance is NT$123.45.\nIt's valid @ 2026-12-31"},
                    },
                    {"line_id": "G102", "ussd": {"*101#": "Your balance is NT$7.00"}},
                    {"line_id": "G103", "responds": False},
                    {"line_id": "G'4", "ussd": {"*101#": "quoted line"}},
                ],
                **server,
            }
        ]
    }


@pytest.fixture
async def sim(simulator: Start) -> RunningSimulator:
    return await simulator(spec())


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[UssdClient]:
    ussd = UssdClient("hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), timeout=5.0)
    yield ussd
    await ussd.close()


async def test_an_answer_and_a_balance(client: UssdClient) -> None:
    answer = await client.run("G101", "*101#")
    assert answer.text == "Your balance is NT$123.45.\nIt's valid  2026-12-31"
    assert (answer.line, answer.code) == ("G101", "*101#")
    assert 0.15 < answer.elapsed < 2
    balance = await client.balance("G102", "*101#", r"NT\$(?P<balance>[\d.]+)")
    assert balance.balance == 7.0 and balance.answer.text == "Your balance is NT$7.00"


async def test_two_requests_at_once_are_spaced_and_each_gets_its_own_answer(
    sim: RunningSimulator, client: UssdClient
) -> None:
    first, second = await asyncio.gather(client.run("G101", "*101#"), client.run("G102", "*101#"))
    assert "123.45" in first.text and "7.00" in second.text
    served = await control(sim, "GET", "servers/hq/ussd")
    assert [entry["line"] for entry in served] == ["G101", "G102"]
    # The second started a second after the first had its answer: never the same relay id.
    assert served[1]["at"] - served[0]["at"] >= 1.0 + 0.2 - 0.05
    assert served[0]["relay_id"] != served[1]["relay_id"]
    assert not any(entry["collided"] for entry in served)
    assert sim.fleet.servers["hq"].counters["ussd_relay_collisions"] == 0


async def test_a_line_that_never_answers(client: UssdClient) -> None:
    with pytest.raises(UpstreamError) as caught:
        await client.run("G103", "*101#")
    assert caught.value.reason is ErrorReason.NO_RESPONSE


async def test_an_unknown_line_and_an_unknown_code(client: UssdClient) -> None:
    with pytest.raises(UpstreamError) as caught:
        await client.run("G999", "*101#")
    assert caught.value.reason is ErrorReason.UNKNOWN_LINE
    with pytest.raises(UpstreamError) as caught:
        await client.run("G101", "*999#")
    assert caught.value.reason is ErrorReason.DEVICE_ERROR
    assert "USSD send failed!" in caught.value.detail


async def test_a_line_name_holding_a_quote_is_escaped_for_the_servers_sql(
    sim: RunningSimulator, client: UssdClient
) -> None:
    assert (await client.run("G'4", "*101#")).text == "quoted line"
    raw = UssdClient(
        "hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), timeout=5.0, escape_line=False
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await raw.run("G'4", "*101#")
        assert caught.value.reason is ErrorReason.SERVER_DATABASE
    finally:
        await raw.close()


async def test_an_unreadable_balance_keeps_the_answer(client: UssdClient) -> None:
    with pytest.raises(BalanceUnreadableError) as caught:
        await client.balance("G102", "*101#", r"Saldo (\d+)")
    assert caught.value.reason is ErrorReason.BALANCE_UNREADABLE
    assert caught.value.answer.text == "Your balance is NT$7.00"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fault": ("wrong_auth", None)}, ErrorReason.AUTH),
        ({"fault": ("html", None)}, ErrorReason.PARSE),
        ({"fault": ("http_500", None)}, ErrorReason.HTTP_STATUS),
        ({"fault": ("db_down", None)}, ErrorReason.SERVER_DATABASE),
        ({"fault": ("reset", None)}, ErrorReason.DISCONNECTED),
        ({"server": {"engine": "dead", "engine_delay": 0.1}}, ErrorReason.ENGINE_DOWN),
    ],
)
async def test_failures_are_typed_and_never_quote_the_credentials(
    sim: RunningSimulator, client: UssdClient, change: dict[str, Any], reason: ErrorReason
) -> None:
    if "fault" in change:
        mode, _ = change["fault"]
        await control(sim, "PUT", "servers/hq/fault", {"mode": mode})
    else:
        await control(sim, "PATCH", "servers/hq", change["server"])
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as caught:
        await client.run("G101", "*101#")
    assert caught.value.reason is reason
    for text in (str(caught.value), caught.value.detail, repr(logs)):
        assert PASSWORD not in text and "PASSWORD" not in text


async def test_wrong_credentials_answer_the_login_page(sim: RunningSimulator) -> None:
    wrong = UssdClient("hq", sim.base_url("hq"), "root", SecretStr("nope"), timeout=5.0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await wrong.run("G101", "*101#")
    finally:
        await wrong.close()
    assert caught.value.reason is ErrorReason.AUTH
    assert "login page" in caught.value.detail


async def test_after_a_timeout_the_next_request_waits_for_the_servers_session(
    sim: RunningSimulator,
) -> None:
    await control(sim, "PATCH", "servers/hq/relay", {"ussd_delay": 0.8})
    hasty = UssdClient(
        "hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), timeout=0.2, session_limit=1.5
    )
    try:
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as caught:
            await hasty.run("G101", "*101#")
        assert caught.value.reason is ErrorReason.TIMEOUT
        assert [entry["event"] for entry in logs] == ["ussd_session_abandoned"]
        assert PASSWORD not in repr(logs)
        hasty.timeout = 5.0
        await hasty.run("G102", "*101#")
    finally:
        await hasty.close()
    served = await control(sim, "GET", "servers/hq/ussd")
    assert served[1]["at"] - started >= 1.5 - 0.05
    # The abandoned session was left to finish: its answer did not cross the next one's.
    assert [entry["reply"].startswith("OK") for entry in served] == [True, True]


async def test_codes_and_lines_are_checked_before_anything_is_sent(client: UssdClient) -> None:
    for code in ("*101$1#", "*101?#", "", "*101# 1"):
        with pytest.raises(ValueError, match="a USSD code is"):
            await client.run("G101", code)
    for line in ("", "G1\n", "x" * 65):
        with pytest.raises(ValueError, match="a line name is"):
            await client.run(line, "*101#")


async def test_nothing_listening_is_connect_and_does_not_hold_the_next_request() -> None:
    ussd = UssdClient("hq", refused_url(), "root", SecretStr(PASSWORD), spacing=0.1)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                await ussd.run("G101", "*101#")
            assert caught.value.reason is ErrorReason.CONNECT
            assert time.monotonic() - started < 1.0
    finally:
        await ussd.close()
