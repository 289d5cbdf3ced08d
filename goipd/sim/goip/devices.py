"""Simulated GoIP devices: the web status page a real GoIP serves beside the SMS Server,
`GET /default/en_US/status.xml` with HTTP Basic auth.

A device groups some lines of one simulated SMS Server (port 1 is its first line) and shows
them as a real GoIP does: each port's module, SIM, GSM registration, signal (CSQ) and operator,
in XML that is not well-formed (raw `&`, HTML inside values, `<x/>` for an empty value). Its
web server is an old embedded one: header lines end in a bare LF (`line_endings`), and the body
is framed by Content-Length, by the close, or chunked (`framing`). aiohttp's server cannot
write that, so devices are served by a small server of their own (`DeviceHttp`), on their own
loopback port, each under its name: `http://HOST:PORT/<device>/default/en_US/status.xml`.

What a port shows comes from its line: `gsm_status` is Y only while the line is LOGIN with its
module up, its SIM present and no reboot under way; `status_line` and `sms_login` follow the
line's login to the SMS Server (`online`). querylines is not changed by `sim_present` or
`module_up`: a test that takes a SIM out sets the line's `reg` too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Final, Protocol

import structlog

from goipd.sim.common import SimError, seconds
from goipd.sim.goip.lines import SimLine

log = structlog.get_logger("goipd.sim")

STATUS_PATH: Final = "/default/en_US/status.xml"
LINE_ENDINGS: Final = ("lf", "crlf")
FRAMINGS: Final = ("length", "close", "chunked")
DEVICE_FAULTS: Final = ("none", "reset", "timeout", "garbage", "http_500")
"""`reset`: the connection is dropped; `timeout`: nothing is answered for `fault_delay`;
`garbage`: status 200 with a body that is no status page; `http_500`: an error page."""
DEVICE_SPEC_KEYS: Final = frozenset(
    {
        "name",
        "lines",
        "username",
        "password",
        "line_endings",
        "framing",
        "responds",
        "fault",
        "fault_delay",
    }
)
DEVICE_SETTINGS: Final = DEVICE_SPEC_KEYS - {"name", "lines"}
"""What PATCH /_control/devices/{device} changes."""
MAX_REQUEST_HEAD: Final = 16 * 1024
REALM: Final = "Please Login"


@dataclass(eq=False)
class SimDevice:
    name: str
    lines: list[str]
    """The SMS Server lines on its ports: port 1 is lines[0]."""
    username: str = "admin"
    password: str = field(default="admin", repr=False)
    line_endings: str = "lf"
    framing: str = "length"
    responds: bool = True
    """The device answers the commands and USSD the engine relays to any of its lines."""
    fault: str = "none"
    fault_delay: float = 30.0
    requests: int = 0
    """status.xml requests that reached it (whatever the answer)."""
    down_until: float = 0.0
    """Rebooting: its web server answers nothing until then (monotonic)."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SimDevice:
        if not isinstance(spec, Mapping):
            raise SimError("a device spec must be an object")
        unknown = set(spec) - DEVICE_SPEC_KEYS
        if unknown:
            raise SimError(f"unknown device fields: {', '.join(sorted(unknown))}")
        name = spec.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("_"):
            raise SimError("a device needs a name without '/' and no leading '_'")
        lines = spec.get("lines")
        if (
            not isinstance(lines, list)
            or not lines
            or not all(isinstance(line, str) and line for line in lines)
        ):
            raise SimError("a device needs a list of its lines, port 1 first")
        if len(set(lines)) != len(lines):
            raise SimError(f"device {name} lists a line twice")
        device = cls(name=name, lines=list(lines))
        device.configure(**{key: spec[key] for key in DEVICE_SETTINGS if key in spec})
        return device

    def configure(self, **changes: Any) -> dict[str, Any]:
        unknown = set(changes) - DEVICE_SETTINGS
        if unknown:
            raise SimError(f"unknown device fields: {', '.join(sorted(unknown))}")
        checked = {key: _device_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(self, key, value)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lines": list(self.lines),
            "username": self.username,
            "line_endings": self.line_endings,
            "framing": self.framing,
            "responds": self.responds,
            "fault": self.fault,
            "fault_delay": self.fault_delay,
            "requests": self.requests,
            "down": self.down_until > time.monotonic(),
        }


def _device_value(key: str, value: Any) -> Any:
    if key in ("username", "password"):
        if not isinstance(value, str):
            raise SimError(f"{key} must be a string")
    elif key == "line_endings":
        if value not in LINE_ENDINGS:
            raise SimError(f"line_endings must be one of {list(LINE_ENDINGS)}")
    elif key == "framing":
        if value not in FRAMINGS:
            raise SimError(f"framing must be one of {list(FRAMINGS)}")
    elif key == "responds":
        if not isinstance(value, bool):
            raise SimError("responds must be true or false")
    elif key == "fault":
        if value not in DEVICE_FAULTS:
            raise SimError(f"fault must be one of {list(DEVICE_FAULTS)}")
    elif key == "fault_delay":
        return seconds(value, key)
    return value


# --- status.xml ---------------------------------------------------------------------------------

_RED_N: Final = '<font color="#FF0000">N</font>'


def _yes_no(flag: bool) -> str:
    return "Y" if flag else _RED_N


def port_fields(port: int, line: SimLine | None, rebooting: bool) -> list[tuple[str, str]]:
    """(field, raw value) of one port, in the device's order; the values unescaped, as the
    device writes them."""
    if line is None:
        return [("module_status_gsm", "0"), ("module_status", _RED_N), ("gsm_sim", _RED_N)]
    module = line.module_up and not rebooting
    registered = module and line.sim_present and line.reg == "LOGIN"
    csq = line.csq if module else 99
    switch = "down" if line.module_up else "up"
    operator = (line.operator or line.provider) if registered else ""
    remain = "NO LIMIT" if line.remain_sms < 0 else str(line.remain_sms)
    count = "NO LIMIT" if line.day_remain_sms < 0 else str(line.day_remain_sms)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    title = "Click to shut down module" if line.module_up else "Click to start module"
    return [
        ("module_status_gsm", "1" if module else "0"),
        ("module_title_gsm", ""),
        (
            "module_status",
            f'<a href="?type=list&{switch}=1&line={port}">{_yes_no(line.module_up)}</a>',
        ),
        ("module_title", title),
        ("gsm_sim", _yes_no(line.sim_present)),
        ("gsm_status", _yes_no(registered)),
        ("status_line", _yes_no(line.online)),
        ("line_state", "IDLE" if registered else ""),
        ("sms_login", _yes_no(line.online)),
        ("smb_login", _RED_N),
        ("gsm_signal", str(csq)),
        ("gsm_cur_oper", operator),
        ("gsm_cur_bst", ""),
        ("lac", ""),
        ("sim_remain", remain),
        ("nocall_t", "0"),
        ("acd", "0"),
        ("asr", "0"),
        ("callt", "0"),
        ("callc", "0/0"),
        ("rct", stamp),
        ("sms_count", count),
    ]


def status_xml(
    device: SimDevice, lines: Mapping[str, SimLine], rebooting: Callable[[str], bool]
) -> str:
    """The page, one element per line (`\\n`): `lN_` blocks for N = 1.. ports."""
    out = ["<status>"]
    for port, line_id in enumerate(device.lines, 1):
        line = lines.get(line_id)
        for name, value in port_fields(port, line, rebooting(line_id)):
            tag = f"l{port}_{name}"
            out.append(f"<{tag}>{value}</{tag}>" if value else f"<{tag}/>")
    out.append("</status>")
    return "\n".join(out) + "\n"


def port_state(port: int, line: SimLine | None, rebooting: bool) -> dict[str, Any]:
    """A port as the control API shows it."""
    if line is None:
        return {"port": port, "line": None}
    registered = line.module_up and not rebooting and line.sim_present and line.reg == "LOGIN"
    return {
        "port": port,
        "line": line.line_id,
        "module_up": line.module_up,
        "rebooting": rebooting,
        "sim_present": line.sim_present,
        "gsm_registered": registered,
        "csq": line.csq if line.module_up and not rebooting else 99,
        "operator": (line.operator or line.provider) if registered else "",
    }


# --- the devices' web server --------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePage:
    """What a device's web server answers: a status, its headers and body; None: the
    connection is dropped without an answer."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


DeviceLookup = Callable[[str], "tuple[SimDevice, Callable[[], str]] | None"]
"""A device by name, with the function that renders its status page now."""


class DeviceHttp:
    """Every simulated device's web server, on one loopback port."""

    def __init__(self, lookup: DeviceLookup) -> None:
        self._lookup = lookup
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=128)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10):
            head = await _read_head(reader)
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rsplit(" ", 1)[0] if " " in rest else rest
        path = target.split("?", 1)[0]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
            if name.strip()
        }
        name, _, page = path.lstrip("/").partition("/")
        found = self._lookup(name)
        if found is None or method != "GET":
            await _write(writer, _plain(404, "Not Found"), "crlf", "length")
            return
        device, render = found
        device.requests += 1
        if device.down_until > time.monotonic() or device.fault == "reset":
            _reset(writer)
            return
        if device.fault == "timeout":
            await asyncio.sleep(device.fault_delay)
            return
        reply = _device_page(device, "/" + page, headers.get("authorization", ""), render)
        await _write(writer, reply, device.line_endings, device.framing)


def _device_page(
    device: SimDevice, page: str, authorization: str, render: Callable[[], str]
) -> DevicePage:
    if not _authorized(device, authorization):
        headers = (("WWW-Authenticate", f'Basic realm="{REALM}"'),)
        return DevicePage(401, "Unauthorized", headers, b"401 Unauthorized")
    if page != STATUS_PATH:
        return _plain(404, "Not Found")
    if device.fault == "http_500":
        return _plain(500, "Internal Server Error")
    if device.fault == "garbage":
        body = b"<html><body><h1>Welcome</h1><p>Loading...</p></body></html>"
        return DevicePage(200, "OK", (("Content-Type", "text/html"),), body)
    body = render().encode("utf-8")
    return DevicePage(200, "OK", (("Content-Type", "text/xml"),), body)


def _authorized(device: SimDevice, header: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, colon, password = decoded.partition(":")
    return bool(colon) and username == device.username and password == device.password


def _plain(status: int, reason: str) -> DevicePage:
    return DevicePage(status, reason, (("Content-Type", "text/html"),), reason.encode())


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while b"\n\n" not in data.replace(b"\r\n", b"\n"):
        chunk = await reader.read(1024)
        if not chunk:
            raise asyncio.IncompleteReadError(data, None)
        data += chunk
        if len(data) > MAX_REQUEST_HEAD:
            raise asyncio.LimitOverrunError("request head too large", len(data))
    return data


async def _write(
    writer: asyncio.StreamWriter, reply: DevicePage, line_endings: str, framing: str
) -> None:
    eol = "\n" if line_endings == "lf" else "\r\n"
    # Chunked framing is HTTP/1.1's; an old server uses it whatever version the client spoke.
    version = "1.1" if framing == "chunked" else "1.0"
    head = [f"HTTP/{version} {reply.status} {reply.reason}"]
    head += [f"{name}: {value}" for name, value in reply.headers]
    head.append("Server: GoIP-Web")
    if framing == "length":
        head.append(f"Content-Length: {len(reply.body)}")
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
    head.append("Connection: close")
    out = (eol.join(head) + eol + eol).encode("latin-1")
    if framing == "chunked":
        half = len(reply.body) // 2
        for chunk in (reply.body[:half], reply.body[half:]):
            if chunk:
                out += f"{len(chunk):x}{eol}".encode() + chunk + eol.encode()
        out += f"0{eol}{eol}".encode()
    else:
        out += reply.body
    writer.write(out)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection without an answer."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


class DeviceHost(Protocol):
    """A server as its devices need it."""

    devices: dict[str, SimDevice]
    lines: dict[str, SimLine]

    def is_rebooting(self, line_id: str) -> bool: ...


def device_lookup(servers: Callable[[], Iterable[DeviceHost]]) -> DeviceLookup:
    """Finds a device among the servers `servers()` gives."""

    def lookup(name: str) -> tuple[SimDevice, Callable[[], str]] | None:
        for server in servers():
            device = server.devices.get(name)
            if device is not None:
                return device, partial(status_xml, device, server.lines, server.is_rebooting)
        return None

    return lookup
