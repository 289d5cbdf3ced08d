"""The simulator's GoIP devices serve status.xml as a real GoIP does, read over a raw loopback
socket: bare-LF HTTP, Basic auth, not-well-formed XML (raw `&`, HTML in values) reflecting each
line's state, the framings and faults, a rebooting device, and the control API."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from goipd.sim.goip import RunningSimulator
from tests.helpers.simulator import control, until

Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]


def spec(**device: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "password": "pw",
                "reboot_time": 0.3,
                "lines": [
                    {"line_id": "G101", "csq": 17, "operator": "AT&T"},
                    {"line_id": "G102", "provider": "Chunghwa", "reg": "LOGOUT"},
                    {"line_id": "G103"},
                ],
                "devices": [{"name": "goip-a", "lines": ["G101", "G102"], **device}],
            }
        ]
    }


async def fetch(
    sim: RunningSimulator,
    device: str = "goip-a",
    login: str | None = "admin:admin",
    page: str = "/default/en_US/status.xml?type=&ajaxcachebust=1",
) -> bytes:
    """The device's raw answer to one HTTP/1.0 request."""
    url = urlsplit(sim.device_url(device))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    auth = f"Authorization: Basic {base64.b64encode(login.encode()).decode()}\r\n" if login else ""
    writer.write(f"GET {url.path}{page} HTTP/1.0\r\nHost: x\r\n{auth}\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\n\n")
    return head, body


async def test_status_xml_as_a_real_device_writes_it(simulator: Start) -> None:
    sim = await simulator(spec())
    raw = await fetch(sim)
    head, body = split(raw)
    assert b"\r" not in head, "header lines end in a bare LF"
    assert head.startswith(b"HTTP/1.0 200 OK\n")
    assert f"Content-Length: {len(body)}".encode() in head
    text = body.decode()
    assert text.startswith("<status>\n") and text.endswith("</status>\n")
    assert '<l1_module_status><a href="?type=list&down=1&line=1">Y</a></l1_module_status>' in text
    assert "<l1_gsm_cur_oper>AT&T</l1_gsm_cur_oper>" in text  # a raw &, as devices write it
    assert "<l1_gsm_signal>17</l1_gsm_signal>" in text
    assert '<l2_gsm_status><font color="#FF0000">N</font></l2_gsm_status>' in text
    assert "<l2_gsm_cur_oper/>" in text  # not registered: no operator
    assert "<l3_" not in text  # G103 is on no device
    assert len(re.findall(r"<l1_\w+", text)) == len(re.findall(r"<l2_\w+", text))


async def test_basic_auth(simulator: Start) -> None:
    sim = await simulator(spec(username="root", password="s3cret"))
    for login in (None, "admin:admin", "root:wrong", "root"):
        head, _ = split(await fetch(sim, login=login))
        assert head.startswith(b"HTTP/1.0 401 ")
        assert b'WWW-Authenticate: Basic realm="Please Login"' in head
    assert split(await fetch(sim, login="root:s3cret"))[0].startswith(b"HTTP/1.0 200 ")


async def test_crlf_and_other_framings(simulator: Start) -> None:
    sim = await simulator(spec(line_endings="crlf", framing="chunked"))
    raw = await fetch(sim)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert body.endswith(b"\r\n0\r\n\r\n")
    await control(sim, "PATCH", "devices/goip-a", {"line_endings": "lf", "framing": "close"})
    head, body = split(await fetch(sim))
    assert b"Content-Length" not in head and body.endswith(b"</status>\n")


async def test_line_changes_show_on_the_page(simulator: Start) -> None:
    sim = await simulator(spec())
    await control(
        sim,
        "PATCH",
        "servers/hq/lines/G101",
        {"csq": 99, "sim_present": False, "operator": "Far EasTone"},
    )
    await control(sim, "PATCH", "servers/hq/lines/G102", {"module_up": False, "reg": "LOGIN"})
    text = split(await fetch(sim))[1].decode()
    assert "<l1_gsm_signal>99</l1_gsm_signal>" in text
    assert '<l1_gsm_sim><font color="#FF0000">N</font></l1_gsm_sim>' in text
    assert "<l1_gsm_cur_oper/>" in text
    assert "up=1&line=2" in text and "<l2_gsm_signal>99</l2_gsm_signal>" in text
    state = await control(sim, "GET", "devices/goip-a")
    assert [(p["line"], p["sim_present"], p["module_up"], p["csq"]) for p in state["ports"]] == [
        ("G101", False, True, 99),
        ("G102", True, False, 99),
    ]
    await control(sim, "DELETE", "servers/hq/lines/G102")
    text = split(await fetch(sim))[1].decode()
    assert '<l2_module_status><font color="#FF0000">N</font></l2_module_status>' in text


async def test_a_rebooting_device_answers_nothing(simulator: Start) -> None:
    sim = await simulator(spec())
    hq = sim.fleet.servers["hq"]
    hq.reboot(["G101", "G102"], hq.devices["goip-a"])
    assert await fetch(sim) == b""
    await until(lambda: not hq.is_rebooting("G101"), within=2.0)
    assert split(await fetch(sim))[0].startswith(b"HTTP/1.0 200 ")
    assert hq.devices["goip-a"].requests == 2


@pytest.mark.parametrize(
    ("fault", "starts"),
    [("garbage", b"HTTP/1.0 200 OK"), ("http_500", b"HTTP/1.0 500 "), ("reset", b"")],
)
async def test_faults(simulator: Start, fault: str, starts: bytes) -> None:
    sim = await simulator(spec(fault=fault))
    raw = await fetch(sim)
    assert raw.startswith(starts)
    assert b"<l1_" not in raw


async def test_unknown_devices_pages_and_control_checks(simulator: Start) -> None:
    sim = await simulator(spec())
    assert (await fetch(sim, device="nope")).startswith(b"HTTP/1.0 404 ")
    assert (await fetch(sim, page="/default/en_US/config.html")).startswith(b"HTTP/1.0 404 ")
    for body in ({"framing": "gzip"}, {"responds": "no"}, {"lines": ["G103"]}, {"x": 1}):
        await control(sim, "PATCH", "devices/goip-a", body, expect=400)
    listed = await control(sim, "GET", "devices")
    assert [(d["name"], d["server"], d["lines"]) for d in listed] == [
        ("goip-a", "hq", ["G101", "G102"])
    ]
