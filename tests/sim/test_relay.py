"""The simulator's en/ussd.php and api.php answer as SMS Server v1.28.4's do, over real loopback
HTTP: the login check (and its escaped password), the answer's SQL escaping, the relay-id
collision of two USSD sessions in one second, the ERROR forms, reboots that take lines offline
and bring them back (or not), and the control API's relay settings and logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from goipd.sim.goip import RunningSimulator, SimFleet
from tests.helpers.simulator import control, until

Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]


def spec(**server: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "username": "root",
                "password": "pw",
                "ussd_delay": 0.2,
                "ussd_timeout": 0.3,
                "command_timeout": 0.2,
                "reboot_time": 0.3,
                "lines": [
                    {"line_id": "G101", "ussd": {"*101#": "Balance NT$1.00"}},
                    {"line_id": "G102", "ussd": {"*101#": "Balance NT$2.00"}},
                    {"line_id": "G103", "responds": False},
                    {"line_id": "G104", "ussd_error": "Unknown application"},
                ],
                "devices": [{"name": "goip-a", "lines": ["G101", "G102"]}],
                **server,
            }
        ]
    }


async def get(
    sim: RunningSimulator,
    page: str,
    params: dict[str, str],
    cookies: dict[str, str] | None = None,
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(f"{sim.base_url('hq')}/goip/{page}", params=params) as resp,
    ):
        assert resp.content_type == "text/html"
        return resp.status, await resp.text()


async def ussd(sim: RunningSimulator, line: str = "G101", code: str = "*101#", **extra: str) -> str:
    params = {"USERNAME": "root", "PASSWORD": "pw", "TERMID": line, "USSDMSG": code, **extra}
    status, text = await get(sim, "en/ussd.php", params)
    assert status == 200
    return text


async def command(sim: RunningSimulator, line: str, cmd: str, **extra: str) -> str:
    params = {"USERNAME": "root", "PASSWORD": "pw", "goipname": line, "cmd": cmd, **extra}
    status, text = await get(sim, "api.php", params)
    assert status == 200
    return text


def is_login_page(text: str) -> bool:
    return 'action="dologin.php"' in text and 'type="password"' in text


# --- en/ussd.php --------------------------------------------------------------------------------


async def test_the_answer_is_printed_sql_escaped_without_its_at_signs(simulator: Start) -> None:
    answer = 'Hi @you: it\'s 5.00\nC:\\x "ok"\r\0'
    sim = await simulator(spec())
    # The answers are replaced as a whole.
    await control(
        sim, "PATCH", "servers/hq/lines/G101", {"ussd": {"*100#": answer, "*101#": "Balance 9"}}
    )
    assert await ussd(sim, code="*100#") == 'OK Hi you: it\\\'s 5.00\\nC:\\\\x \\"ok\\"\\r\\0'
    assert await ussd(sim) == "OK Balance 9"


async def test_error_forms(simulator: Start) -> None:
    sim = await simulator(spec())
    assert await ussd(sim, "G103") == "ERROR term no response"
    assert await ussd(sim, "G104") == "ERROR Unknown application"
    assert await ussd(sim, "G101", "*999#") == "ERROR USSD send failed!"
    # An unknown line is said at once, and then the page waits for an answer all the same.
    assert await ussd(sim, "G999") == "ERROR Not find this TERMERROR term no response"
    assert await ussd(sim, "G101", "*101$1#") == "cannt find recharge card"
    # The line name goes into the SQL as it comes.
    assert (await ussd(sim, "G'1")).startswith("Bad query: You have an error in your SQL syntax")
    assert await ussd(sim, "g101") == "OK Balance NT$1.00"
    await control(sim, "PATCH", "servers/hq/lines/G102", {"reg": "LOGOUT"})
    assert await ussd(sim, "G102") == "ERROR USSD send failed!"
    await control(sim, "PATCH", "servers/hq", {"engine": "dead", "engine_delay": 0.1})
    assert await ussd(sim) == "ERROR goipcron no response"


async def test_the_login_check(simulator: Start) -> None:
    sim = await simulator(spec())
    logins: list[dict[str, str]] = [
        {"USERNAME": "root", "PASSWORD": "nope"},
        {"USERNAME": "admin", "PASSWORD": "pw"},
        {},
    ]
    for params in logins:
        status, text = await get(
            sim, "en/ussd.php", {"TERMID": "G101", "USSDMSG": "*101#", **params}
        )
        assert status == 200 and is_login_page(text)
    assert await ussd(sim, USERNAME="ROOT") == "OK Balance NT$1.00"
    # A web login's session skips the check.
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        http.post(
            f"{sim.base_url('hq')}/goip/en/dologin.php",
            data={"username": "root", "password": "pw"},
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 302
        sid = resp.cookies["PHPSESSID"].value
    params = {"TERMID": "G101", "USSDMSG": "*101#"}
    _, text = await get(sim, "en/ussd.php", params, cookies={"PHPSESSID": sid})
    assert text == "OK Balance NT$1.00"


async def test_a_password_holding_a_quote_never_logs_in(simulator: Start) -> None:
    sim = await simulator(spec(password="it's"))
    params = {"USERNAME": "root", "PASSWORD": "it's", "TERMID": "G101", "USSDMSG": "*101#"}
    _, text = await get(sim, "en/ussd.php", params)
    assert is_login_page(text)


async def test_two_sessions_in_one_second_get_the_later_ones_answer(simulator: Start) -> None:
    sim = await simulator(spec())
    hq = sim.fleet.servers["hq"]
    hq.relay_clock = lambda: 1_765_000_000.0  # every request in the same second
    await control(sim, "PATCH", "servers/hq/relay", {"ussd_delay": 1.0})  # they overlap
    first = asyncio.create_task(ussd(sim, "G101"))
    await until(lambda: len(hq.ussd_log) == 1)
    second = await ussd(sim, "G102")
    assert (await first, second) == ("OK Balance NT$2.00", "OK Balance NT$2.00")
    assert hq.counters["ussd_relay_collisions"] == 1
    log = await control(sim, "GET", "servers/hq/ussd")
    assert [(e["line"], e["collided"]) for e in log] == [("G101", False), ("G102", True)]
    # One after the other, the same second is harmless: the first session is over.
    assert await ussd(sim, "G101") == "OK Balance NT$1.00"


async def test_a_slow_answer(simulator: Start) -> None:
    sim = await simulator(spec())
    await control(sim, "PATCH", "servers/hq/relay", {"ussd_delay": 0.6})
    started = asyncio.get_running_loop().time()
    assert await ussd(sim) == "OK Balance NT$1.00"
    assert asyncio.get_running_loop().time() - started >= 0.6


# --- api.php ------------------------------------------------------------------------------------


async def test_a_module_reboot_and_a_device_reboot(simulator: Start) -> None:
    sim = await simulator(spec())
    hq = sim.fleet.servers["hq"]
    assert await command(sim, "G103", "svr_reboot_module") == "ERROR:time outOK"
    assert await command(sim, "G104", "svr_reboot_module") == "OK"
    assert (hq.lines["G104"].online, hq.lines["G104"].reg) == (False, "")
    assert hq.is_rebooting("G104")
    # A rebooting line cannot be reached.
    assert await command(sim, "G104", "svr_reboot_module") == "ERROR:time outOK"
    await until(lambda: hq.lines["G104"].reg == "LOGIN", within=2.0)
    assert await command(sim, "G102", "svr_reboot_dev") == "OK"
    assert [hq.lines[name].online for name in ("G101", "G102", "G103", "G104")] == [
        False,
        False,
        True,
        True,
    ]
    await until(lambda: hq.lines["G101"].online and hq.lines["G102"].online, within=2.0)
    assert await command(sim, "G101", "svr_reboot_mod") == (
        f"ERROR:ERROR {hq.command_log[-1]['relay_id']} unknown command"
    )
    commands = await control(sim, "GET", "servers/hq/commands")
    assert [(c["cmd"], c["line"], c["reply"]) for c in commands] == [
        ("svr_reboot_module", "G103", "ERROR:time outOK"),
        ("svr_reboot_module", "G104", "OK"),
        ("svr_reboot_module", "G104", "ERROR:time outOK"),
        ("svr_reboot_dev", "G102", "OK"),
        (
            "svr_reboot_mod",
            "G101",
            "ERROR:ERROR " + str(commands[-1]["relay_id"]) + " unknown command",
        ),
    ]
    assert hq.counters["reboots"] == 3


async def test_reboot_results(simulator: Start) -> None:
    sim = await simulator(spec())
    hq = sim.fleet.servers["hq"]
    await control(sim, "PATCH", "servers/hq/lines/G101", {"reboot_result": "unregistered"})
    await control(sim, "PATCH", "servers/hq/lines/G102", {"reboot_result": "offline"})
    await command(sim, "G101", "svr_reboot_dev")
    await until(lambda: not hq.is_rebooting("G101") and not hq.is_rebooting("G102"))
    assert (hq.lines["G101"].online, hq.lines["G101"].reg) == (True, "LOGOUT")
    assert (hq.lines["G102"].online, hq.lines["G102"].reg) == (False, "")


async def test_api_error_forms(simulator: Start) -> None:
    sim = await simulator(spec())
    # Checked before the login.
    assert (await get(sim, "api.php", {"cmd": "svr_reboot_module"}))[1] == (
        "ERROR:not set goipid or goipname."
    )
    _, text = await get(
        sim, "api.php", {"USERNAME": "root", "PASSWORD": "x", "goipname": "G101", "cmd": "x"}
    )
    assert is_login_page(text)
    assert await command(sim, "G999", "svr_reboot_module") == "ERROR:Not find this goip line."
    assert (await command(sim, "G'1", "svr_reboot_module")).startswith("Bad query: ")
    goipid = str(sim.fleet.servers["hq"]._row_id("goip", "G104"))
    params = {"USERNAME": "root", "PASSWORD": "pw", "goipid": goipid, "cmd": "svr_reboot_module"}
    assert (await get(sim, "api.php", params))[1] == "OK"
    await control(sim, "PATCH", "devices/goip-a", {"responds": False})
    assert await command(sim, "G101", "svr_reboot_module") == "ERROR:time outOK"
    await control(sim, "PATCH", "servers/hq", {"engine": "dead", "engine_delay": 0.1})
    assert await command(sim, "G101", "svr_reboot_module") == (
        'ERROR:Cannot get response from process named "goipcron"'
    )


async def test_faults_reach_the_relayed_pages(simulator: Start) -> None:
    sim = await simulator(spec())
    await control(sim, "PUT", "servers/hq/fault", {"mode": "db_down"})
    assert await ussd(sim) == "Could not connect"
    await control(sim, "PUT", "servers/hq/fault", {"mode": "wrong_auth"})
    assert is_login_page(await command(sim, "G101", "svr_reboot_module"))
    assert sim.fleet.servers["hq"].counters["reboots"] == 0


# --- control API and spec -----------------------------------------------------------------------


async def test_relay_settings(simulator: Start) -> None:
    sim = await simulator(spec())
    assert await control(sim, "PATCH", "servers/hq/relay", {"reboot_time": 2}) == {
        "command_timeout": 0.2,
        "reboot_time": 2.0,
        "ussd_delay": 0.2,
        "ussd_timeout": 0.3,
    }
    for body in ({"reboot_time": -1}, {"ussd_delay": "1"}, {"ussd": 1}):
        await control(sim, "PATCH", "servers/hq/relay", body, expect=400)
    bad_lines: list[dict[str, Any]] = [
        {"csq": 32},
        {"csq": True},
        {"ussd": {"*1#": 1}},
        {"reboot_result": "maybe"},
    ]
    for line in bad_lines:
        await control(sim, "PATCH", "servers/hq/lines/G101", line, expect=400)
    state = await control(sim, "GET", "servers/hq")
    assert state["relay"]["reboot_time"] == 2.0 and state["devices"] == ["goip-a"]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([{"name": "a", "lines": ["G999"]}], "has no line G999"),
        ([{"name": "a", "lines": ["G101"]}, {"name": "b", "lines": ["G101"]}], "two devices"),
        ([{"name": "a", "lines": []}], "list of its lines"),
        ([{"name": "_a", "lines": ["G101"]}], "leading '_'"),
        ([{"name": "a", "lines": ["G101"], "framing": "gzip"}], "framing must be"),
        ([{"name": "a", "lines": ["G101"], "colour": "red"}], "unknown device fields"),
    ],
)
def test_device_specs_are_checked(devices: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimFleet.from_spec(spec(devices=devices))


async def test_device_names_belong_to_the_fleet(simulator: Start) -> None:
    sim = await simulator(spec())
    other = {
        "name": "branch",
        "password": "pw",
        "lines": [{"line_id": "G201"}],
        "devices": [{"name": "goip-a", "lines": ["G201"]}],
    }
    await control(sim, "POST", "servers", other, expect=409)
    await control(sim, "GET", "devices/nope", expect=404)
