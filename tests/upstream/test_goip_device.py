"""A GoIP device's status.xml: the lenient parser on pages laid out as a real device writes them
(raw `&`, HTML inside values, `<x/>`), the lenient HTTP reader (bare LF, chunked, read to the
close), and the client against the simulator's devices over loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from goipd.sim.goip import RunningSimulator
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip_device import (
    DeviceClient,
    DeviceStatusError,
    HttpReplyError,
    parse_http_reply,
    parse_status_xml,
)
from tests.helpers.cloud import refused_url
from tests.helpers.simulator import control

Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]

# One port as a GoIP-1 wrote it (modelled on a captured reply): one field a line.
ONE_PORT = """<status>
<l1_module_status_gsm>1</l1_module_status_gsm>
<l1_module_title_gsm/>
<l1_module_status><a href="?type=list&down=1&line=1">Y</a></l1_module_status>
<l1_module_title>Click to shut down module</l1_module_title>
<l1_gsm_sim>Y</l1_gsm_sim>
<l1_gsm_status>Y</l1_gsm_status>
<l1_status_line>Y</l1_status_line>
<l1_line_state>IDLE</l1_line_state>
<l1_sms_login/>
<l1_smb_login><font color="#FF0000">N</font></l1_smb_login>
<l1_gsm_signal>31</l1_gsm_signal>
<l1_gsm_cur_oper>Far EasTone</l1_gsm_cur_oper>
<l1_gsm_cur_bst/>
<l1_lac/>
<l1_sim_remain>NO LIMIT</l1_sim_remain>
<l1_nocall_t>5406</l1_nocall_t>
<l1_acd>0</l1_acd>
<l1_asr>0</l1_asr>
<l1_callt>0</l1_callt>
<l1_callc>0/7</l1_callc>
<l1_rct>2026-03-18 01:08:56</l1_rct>
<l1_sms_count>NO LIMIT</l1_sms_count>
</status>
"""


def port_block(n: int, **values: str) -> str:
    fields = {
        "module_status": f'<a href="?type=list&down=1&line={n}">Y</a>',
        "gsm_sim": "Y",
        "gsm_status": "Y",
        "status_line": "Y",
        "gsm_signal": "20",
        "gsm_cur_oper": "Chunghwa",
        **values,
    }
    return "".join(
        f"<l{n}_{name}>{value}</l{n}_{name}>\r\n" if value else f"<l{n}_{name}/>\r\n"
        for name, value in fields.items()
    )


# --- the parser ---------------------------------------------------------------------------------


def test_a_real_devices_page_with_html_inside_values() -> None:
    status = parse_status_xml(ONE_PORT.encode())
    assert list(status.ports) == [1]
    port = status.ports[1]
    assert (port.module_on, port.sim_present, port.gsm_registered, port.voip_registered) == (
        True,
        True,
        True,
        True,
    )
    assert (port.csq, port.signal_dbm) == (31, -51)
    assert (port.operator, port.line_state) == ("Far EasTone", "IDLE")
    assert (port.sim_remain, port.sms_count, port.sms_login) == ("NO LIMIT", "NO LIMIT", None)
    assert port.fields["smb_login"] == "N"
    assert port.fields["callc"] == "0/7" and port.fields["lac"] == ""


def test_four_ports_each_as_it_is() -> None:
    red_n = '<font color="#FF0000">N</font>'
    body = "<status>\r\n" + "".join(
        [
            port_block(1, gsm_signal="0"),
            port_block(2, gsm_sim=red_n, gsm_status=red_n, gsm_cur_oper=""),
            port_block(3, gsm_signal="99", gsm_cur_oper="AT&T"),
            port_block(
                4,
                module_status=f'<a href="?type=list&up=1&line=4">{red_n}</a>',
                gsm_status=red_n,
                gsm_signal="",
            ),
        ]
    )  # and no </status>: cut short, the fields that came are still read
    status = parse_status_xml(body)
    ports = status.ports
    assert (ports[1].csq, ports[1].signal_dbm) == (0, -113)
    assert (ports[2].sim_present, ports[2].gsm_registered, ports[2].operator) == (
        False,
        False,
        None,
    )
    assert (ports[3].csq, ports[3].signal_dbm, ports[3].operator) == (None, None, "AT&T")
    assert (ports[4].module_on, ports[4].csq) == (False, None)
    assert status.port(5) is None


def test_missing_unknown_and_odd_values_are_none_never_an_error() -> None:
    body = (
        "<status><l1_gsm_signal>-75dBm</l1_gsm_signal><l1_gsm_sim>maybe</l1_gsm_sim>"
        "<L2_GSM_SIGNAL >12</L2_GSM_SIGNAL><l2_new_thing>x &amp; y</l2_new_thing>"
        "<l3_gsm_signal>32</l3_gsm_signal><l33_gsm_signal>5</l33_gsm_signal>"
        "<l4_gsm_signal>7</l5_gsm_signal></status>"
    )
    status = parse_status_xml(body)
    assert sorted(status.ports) == [1, 2, 3]
    assert (status.ports[1].csq, status.ports[1].sim_present, status.ports[1].operator) == (
        None,
        None,
        None,
    )
    assert status.ports[2].csq == 12 and status.ports[2].fields["new_thing"] == "x & y"
    assert status.ports[3].csq is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><body>401 Unauthorized</body></html>",
        b"<status></status>",
        "\u00ff\u00fe garbage".encode("utf-16"),
    ],
)
def test_a_page_without_ports_is_a_typed_error(body: bytes) -> None:
    with pytest.raises(DeviceStatusError):
        parse_status_xml(body)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400),
        st.lists(
            st.sampled_from(["<l1_gsm_signal>", "</l1_gsm_signal>", "<l2_x/>", "31", "&", "<a>"]),
            max_size=30,
        ).map("".join),
    )
)
def test_the_parser_raises_only_its_typed_error(body: bytes | str) -> None:
    try:
        status = parse_status_xml(body)
    except DeviceStatusError:
        return
    for port in status.ports.values():
        assert port.csq is None or 0 <= port.csq <= 31


# --- reading HTTP leniently ---------------------------------------------------------------------


XML = b"<status>\n<l1_gsm_signal>9</l1_gsm_signal>\n</status>\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.0 200 OK\nContent-Type: text/xml\nContent-Length: %d\n\n" % len(XML) + XML,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n" + XML,
        b"HTTP/1.0 200 OK\nContent-Length: %d\n\n" % len(XML) + XML + b"trailing junk",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n%x\n" % len(XML) + XML + b"\n0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + XML[:5] + b"\r\n"
        b"%x;ext=1\r\n" % (len(XML) - 5) + XML[5:] + b"\r\n0\r\n\r\n",
    ],
)
def test_replies_as_old_embedded_servers_write_them(raw: bytes) -> None:
    reply = parse_http_reply(raw)
    assert (reply.status, reply.body) == (200, XML)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"<status></status>",
        b"HTTP/1.0 200 OK\nContent-Length: 10",
        b"HTTP/2 200\n\nx",
        b"HTTP/1.0 200 OK\nContent-Length: 99\n\nshort",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nzz\nabc",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n10\nabc",
    ],
)
def test_what_is_not_http_is_refused(raw: bytes) -> None:
    with pytest.raises(HttpReplyError):
        parse_http_reply(raw)


@settings(max_examples=300)
@given(st.binary(max_size=300).map(lambda tail: b"HTTP/1.1 200 OK\n" + tail))
def test_the_http_reader_raises_only_its_typed_error(raw: bytes) -> None:
    try:
        parse_http_reply(raw)
    except HttpReplyError:
        pass


# --- the client against the simulator -----------------------------------------------------------


def spec(**device: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "password": "pw",
                "lines": [
                    {"line_id": "G101", "csq": 31, "operator": "AT&T"},
                    {"line_id": "G102", "csq": 9, "provider": "Chunghwa"},
                    {"line_id": "G103", "reg": "LOGOUT"},
                ],
                "devices": [
                    {
                        "name": "goip-a",
                        "lines": ["G101", "G102", "G103"],
                        "username": "admin",
                        "password": "dev-pw",
                        **device,
                    }
                ],
            }
        ]
    }


@pytest.fixture
async def sim(simulator: Start) -> RunningSimulator:
    return await simulator(spec())


def client_for(
    sim: RunningSimulator, password: str = "dev-pw", timeout: float = 5.0
) -> DeviceClient:
    return DeviceClient(
        "goip-a", sim.device_url("goip-a"), "admin", SecretStr(password), timeout=timeout
    )


@pytest.fixture
def client(sim: RunningSimulator) -> DeviceClient:
    return client_for(sim)


@pytest.mark.parametrize("line_endings", ["lf", "crlf"])
@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
async def test_the_status_page_in_every_framing(
    sim: RunningSimulator, client: DeviceClient, line_endings: str, framing: str
) -> None:
    await control(
        sim, "PATCH", "devices/goip-a", {"line_endings": line_endings, "framing": framing}
    )
    ports = (await client.status()).ports
    assert [(p.csq, p.signal_dbm) for p in ports.values()] == [(31, -51), (9, -95), (25, -63)]
    assert [p.operator for p in ports.values()] == ["AT&T", "Chunghwa", None]
    assert [p.gsm_registered for p in ports.values()] == [True, True, False]
    assert all(p.sim_present and p.module_on for p in ports.values())


async def test_changes_through_the_control_api_show_on_the_page(
    sim: RunningSimulator, client: DeviceClient
) -> None:
    await control(sim, "PATCH", "servers/hq/lines/G101", {"csq": 99})
    await control(sim, "PATCH", "servers/hq/lines/G102", {"sim_present": False})
    await control(sim, "PATCH", "servers/hq/lines/G103", {"module_up": False})
    ports = (await client.status()).ports
    assert (ports[1].csq, ports[1].signal_dbm, ports[1].gsm_registered) == (None, None, True)
    assert (ports[2].sim_present, ports[2].gsm_registered, ports[2].operator) == (
        False,
        False,
        None,
    )
    assert (ports[3].module_on, ports[3].csq) == (False, None)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", ErrorReason.PARSE),
        ("http_500", ErrorReason.HTTP_STATUS),
        ("reset", ErrorReason.DISCONNECTED),
        ("timeout", ErrorReason.TIMEOUT),
    ],
)
async def test_device_faults(sim: RunningSimulator, fault: str, reason: ErrorReason) -> None:
    await control(sim, "PATCH", "devices/goip-a", {"fault": fault, "fault_delay": 1.0})
    with pytest.raises(UpstreamError) as caught:
        await client_for(sim, timeout=0.3).status()
    assert caught.value.reason is reason


async def test_a_wrong_login_is_auth_and_keeps_the_password_out(sim: RunningSimulator) -> None:
    with pytest.raises(UpstreamError) as caught:
        await client_for(sim, password="wrong-dev-pw").status()
    assert caught.value.reason is ErrorReason.AUTH
    assert "wrong-dev-pw" not in str(caught.value)


async def test_nothing_listening_is_connect() -> None:
    client = DeviceClient("x", refused_url(), "admin", SecretStr("admin"), timeout=2.0)
    with pytest.raises(UpstreamError) as caught:
        await client.status()
    assert caught.value.reason is ErrorReason.CONNECT


async def test_a_page_over_the_limit_is_refused(sim: RunningSimulator) -> None:
    small = DeviceClient(
        "goip-a", sim.device_url("goip-a"), "admin", SecretStr("dev-pw"), max_bytes=200
    )
    with pytest.raises(UpstreamError) as caught:
        await small.status()
    assert caught.value.reason is ErrorReason.PARSE


def test_device_urls_are_checked() -> None:
    for url in ("ftp://x", "http://", "http://u:p@10.0.0.1", "http://10.0.0.1/?x=1"):
        with pytest.raises(ValueError, match="a device URL"):
            DeviceClient("x", url, "admin", SecretStr("admin"))


async def test_an_unknown_device_and_the_wrong_page_are_http_404(sim: RunningSimulator) -> None:
    other = DeviceClient("nope", sim.device_url("nope"), "admin", SecretStr("dev-pw"), timeout=2.0)
    with pytest.raises(UpstreamError) as caught:
        await other.status()
    assert caught.value.reason is ErrorReason.HTTP_STATUS and "404" in caught.value.detail
    assert isinstance(DeviceStatusError("x"), ParseError)
