"""Remote commands through the SMS Server's api.php: the reply parser on replies as v1.28.4
prints them (`OK`, `ERROR:...` with its `time outOK`, JSON, the login page), and the client
against the simulator over loopback HTTP: a reboot takes the line offline and it comes back (or
not), a device reboot takes every line of the device, one command per line at a time."""

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
from goipd.upstream.goip import DatabaseFault, GoipClient, LineStatus
from goipd.upstream.goip_commands import CommandClient, CommandReply, parse_command_reply
from goipd.upstream.goip_ussd import LoginPage, RelayError
from tests.helpers.simulator import control, until

PASSWORD = "s3cret-pw"
Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]


# --- the reply parser ---------------------------------------------------------------------------


def test_ok_and_json() -> None:
    assert parse_command_reply("OK") == CommandReply("OK")
    assert parse_command_reply("Warning: something<br>OK\n") == CommandReply("OK")
    reply = parse_command_reply('{"netselect":"1"}')
    assert reply.values == {"netselect": "1"}
    assert parse_command_reply('{"1":"10086"}').values == {"1": "10086"}


@pytest.mark.parametrize(
    ("reply", "reason", "message"),
    [
        # The page prints OK after its own time out: it judged the command it had sent.
        ("ERROR:time outOK", ErrorReason.NO_RESPONSE, "never answered"),
        ("ERROR:time out", ErrorReason.NO_RESPONSE, "never answered"),
        ("ERROR:Not find this goip line.", ErrorReason.UNKNOWN_LINE, "no such line"),
        ("ERROR:not set goipid or goipname.", ErrorReason.UNKNOWN_LINE, "no such line"),
        (
            'ERROR:Cannot get response from process named "goipcron"',
            ErrorReason.ENGINE_DOWN,
            "engine",
        ),
        ("ERROR:ERROR 1765101234 module busy", ErrorReason.DEVICE_ERROR, "module busy"),
        ("ERROR:GSMERROR 1765101234 no sim", ErrorReason.DEVICE_ERROR, "GSMERROR"),
        ('{"netselect":"ERROR:failed"}', ErrorReason.DEVICE_ERROR, "ERROR:failed"),
    ],
)
def test_errors_have_their_own_reasons(reply: str, reason: ErrorReason, message: str) -> None:
    with pytest.raises(RelayError) as caught:
        parse_command_reply(reply)
    assert caught.value.reason is reason
    assert message in caught.value.message


def test_the_login_page_a_database_failure_and_garbage() -> None:
    with pytest.raises(LoginPage):
        parse_command_reply(
            '<html><form action="dologin.php" method="post"><input type="password" '
            'name="password"></form></html>'
        )
    with pytest.raises(DatabaseFault):
        parse_command_reply("Bad query: You have an error in your SQL syntax (...)")
    for body in ("", "<html>Not Found</html>", "{nope", '{"a": {"b": 1}}', "[1]", "DONE"):
        with pytest.raises(ParseError) as caught:
            parse_command_reply(body)
        assert type(caught.value) is ParseError


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_the_parser_raises_only_its_typed_errors(body: bytes | str) -> None:
    try:
        parse_command_reply(body)
    except (ParseError, DatabaseFault):
        pass


# --- the client against the simulator -----------------------------------------------------------


def spec(**server: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "username": "root",
                "password": PASSWORD,
                "reboot_time": 0.4,
                "command_timeout": 0.3,
                "lines": [
                    {"line_id": "G101"},
                    {"line_id": "G102", "reg": "LOGOUT", "reboot_result": "unregistered"},
                    {"line_id": "G103"},
                    {"line_id": "G104"},
                ],
                "devices": [
                    {"name": "goip-a", "lines": ["G101", "G102"]},
                    {"name": "goip-b", "lines": ["G103"], "responds": False},
                ],
                **server,
            }
        ]
    }


@pytest.fixture
async def sim(simulator: Start) -> RunningSimulator:
    return await simulator(spec())


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[CommandClient]:
    commands = CommandClient(
        "hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), timeout=5.0, spacing=0.2
    )
    yield commands
    await commands.close()


@pytest.fixture
async def lines(sim: RunningSimulator) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
    goip = GoipClient("hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), 5.0)

    async def poll() -> dict[str, LineStatus]:
        return {line.line_id: line for line in await goip.query_lines()}

    yield poll
    await goip.close()


async def wait_for(
    poll: Callable[[], Awaitable[dict[str, Any]]],
    check: Callable[[dict[str, Any]], bool],
    within: float = 3.0,
) -> None:
    deadline = time.monotonic() + within
    while not check(await poll()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def state(line: LineStatus) -> tuple[bool, bool]:
    return line.online, line.registered


async def test_a_module_reboot_takes_the_line_offline_then_it_registers_again(
    sim: RunningSimulator,
    client: CommandClient,
    lines: Callable[[], Awaitable[dict[str, LineStatus]]],
) -> None:
    assert await client.reboot_module("G101") == CommandReply("OK")
    now = await lines()
    assert state(now["G101"]) == (False, False)
    assert state(now["G103"]) == (True, True)
    await wait_for(lines, lambda seen: state(seen["G101"]) == (True, True))
    served = await control(sim, "GET", "servers/hq/commands")
    assert [(c["cmd"], c["line"], c["reply"]) for c in served] == [
        ("svr_reboot_module", "G101", "OK")
    ]


async def test_a_line_scripted_to_stay_unregistered_comes_back_online_only(
    client: CommandClient, lines: Callable[[], Awaitable[dict[str, LineStatus]]]
) -> None:
    await client.reboot_module("G102")
    assert state((await lines())["G102"]) == (False, False)
    await wait_for(lines, lambda seen: seen["G102"].online)
    assert state((await lines())["G102"]) == (True, False)


async def test_a_device_reboot_takes_every_line_of_that_device(
    sim: RunningSimulator,
    client: CommandClient,
    lines: Callable[[], Awaitable[dict[str, LineStatus]]],
) -> None:
    await client.reboot_device("g101")  # names compare as MySQL compares them
    now = await lines()
    assert [state(now[name]) for name in ("G101", "G102", "G103", "G104")] == [
        (False, False),
        (False, False),
        (True, True),
        (True, True),
    ]
    device = await control(sim, "GET", "devices/goip-a")
    assert device["down"] and [port["rebooting"] for port in device["ports"]] == [True, True]
    await wait_for(lines, lambda seen: state(seen["G101"]) == (True, True))
    assert state((await lines())["G102"]) == (True, False)


async def test_a_device_that_does_not_answer_times_out(
    sim: RunningSimulator, client: CommandClient
) -> None:
    with pytest.raises(UpstreamError) as caught:
        await client.reboot_module("G103")
    assert caught.value.reason is ErrorReason.NO_RESPONSE
    assert sim.fleet.servers["hq"].lines["G103"].online  # nothing was rebooted


@pytest.mark.parametrize(
    ("line", "change", "reason"),
    [
        ("G999", None, ErrorReason.UNKNOWN_LINE),
        ("G101", ("PUT", "servers/hq/fault", {"mode": "wrong_auth"}), ErrorReason.AUTH),
        ("G101", ("PUT", "servers/hq/fault", {"mode": "http_500"}), ErrorReason.HTTP_STATUS),
        ("G101", ("PUT", "servers/hq/fault", {"mode": "html"}), ErrorReason.PARSE),
        (
            "G101",
            ("PATCH", "servers/hq", {"engine": "dead", "engine_delay": 0.1}),
            ErrorReason.ENGINE_DOWN,
        ),
    ],
)
async def test_failures_are_typed_and_never_quote_the_credentials(
    sim: RunningSimulator,
    client: CommandClient,
    line: str,
    change: tuple[str, str, dict[str, Any]] | None,
    reason: ErrorReason,
) -> None:
    if change is not None:
        await control(sim, *change)
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as caught:
        await client.reboot_module(line)
    assert caught.value.reason is reason
    for text in (str(caught.value), repr(logs)):
        assert PASSWORD not in text
    assert sim.fleet.servers["hq"].counters["reboots"] == 0


async def test_commands_on_one_line_take_turns_and_other_lines_do_not_wait(
    sim: RunningSimulator,
) -> None:
    await control(sim, "PATCH", "servers/hq/relay", {"reboot_time": 0.05})
    spaced = CommandClient("hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), spacing=1.0)
    try:
        await asyncio.gather(
            spaced.reboot_module("G101"), spaced.reboot_module("G101"), spaced.reboot_module("G104")
        )
    finally:
        await spaced.close()
    served = await control(sim, "GET", "servers/hq/commands")
    g101 = sorted(c["at"] for c in served if c["line"] == "G101")
    g104 = [c["at"] for c in served if c["line"] == "G104"]
    assert len(g101) == 2 and g101[1] - g101[0] >= 1.0 - 0.02
    assert abs(g104[0] - g101[0]) < 0.5
    assert all(c["reply"] == "OK" for c in served)


async def test_after_a_timeout_the_next_command_on_that_line_waits_for_the_page(
    sim: RunningSimulator,
) -> None:
    hasty = CommandClient(
        "hq", sim.base_url("hq"), "root", SecretStr(PASSWORD), timeout=0.1, session_limit=1.0
    )
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await hasty.reboot_module("G103")  # answers ERROR:time outOK after 0.3 s
        assert caught.value.reason is ErrorReason.TIMEOUT
        assert hasty.busy("G103") is False
        hasty.timeout = 5.0
        await control(sim, "PATCH", "devices/goip-b", {"responds": True})
        await hasty.reboot_module("G103")
    finally:
        await hasty.close()
    served = await control(sim, "GET", "servers/hq/commands")
    assert served[1]["at"] - started >= 1.0 - 0.05


async def test_only_the_two_reboots_and_checked_lines() -> None:
    commands = CommandClient("hq", "http://127.0.0.1:9", "root", SecretStr(PASSWORD))
    with pytest.raises(ValueError, match="unknown command"):
        await commands.run("G101", "set_imei")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a line name is"):
        await commands.run("", "svr_reboot_dev")
    await until(lambda: not commands.busy("G101"))
    await commands.close()
