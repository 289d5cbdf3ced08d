"""A GoIP device's own web status, `GET /default/en_US/status.xml`: per port, the module, the
SIM, the GSM registration, the signal and the operator. The pure parser and an async client.

What the page is like, and what follows here:
- It is not well-formed XML: values hold raw `&` and HTML (`<a href="?type=list&down=1&line=1">
  Y</a>`, `<font color="#FF0000">N</font>`), empty values are `<x/>`. The parser cuts each
  `lN_field` element out of the text, drops the tags inside, and never needs the whole to
  parse: a field it does not know is kept as text, one it needs and lacks is None.
- `lN_gsm_signal` is the GSM CSQ: 0-31, 99 unknown; dBm = 2 x CSQ - 113.
- The device's web server ends its header lines with a bare LF, and is old: the client speaks
  HTTP/1.0 itself (Basic auth, one request per connection) and reads headers ending in LF or
  CRLF, a Content-Length, a chunked body or one that ends at the close.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import ssl
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError

STATUS_PATH: Final = "/default/en_US/status.xml"
MAX_PORTS: Final = 32
"""The largest GoIP has 32 ports."""
MAX_STATUS_BYTES: Final = 1024 * 1024
MAX_HEADER_BYTES: Final = 32 * 1024
DEFAULT_DEVICE_TIMEOUT: Final = 10.0
UNKNOWN_CSQ: Final = 99


WEAK_SIGNAL_DBM: Final = -103
"""CSQ 5 and below: where SMS start to fail and modules drop off the network. The API's
`weak_signal`, the CLI and the status page show it; prometheus/alerts.yml's GoipdLineSignalWeak
has the same threshold (a test keeps them equal)."""


def csq_dbm(csq: int | None) -> int | None:
    """A CSQ reading in dBm (2 x CSQ - 113): -113 to -51; None when unknown."""
    return None if csq is None else 2 * csq - 113


@dataclass(frozen=True, slots=True)
class PortStatus:
    """One port (`lN_`) as the device shows it; None where it shows nothing usable."""

    port: int
    module_on: bool | None
    """`lN_module_status`: the GSM module is powered (the operator can shut it down)."""
    sim_present: bool | None
    """`lN_gsm_sim`."""
    gsm_registered: bool | None
    """`lN_gsm_status`: registered on the GSM network."""
    csq: int | None
    """`lN_gsm_signal`, 0-31; None for 99 (unknown), a missing or an unreadable value."""
    operator: str | None
    """`lN_gsm_cur_oper`: the network the module is on."""
    line_state: str | None
    """`lN_line_state`: IDLE, ..."""
    voip_registered: bool | None
    """`lN_status_line`: the line's login to its SMS Server or SIP registrar."""
    sms_login: bool | None
    """`lN_sms_login`."""
    sim_remain: str | None
    """`lN_sim_remain` as shown (`NO LIMIT`, a count)."""
    sms_count: str | None
    """`lN_sms_count` as shown."""
    fields: Mapping[str, str]
    """Every `lN_` field as text (tags dropped), by its name without the prefix."""

    @property
    def signal_dbm(self) -> int | None:
        return csq_dbm(self.csq)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    ports: Mapping[int, PortStatus]
    """By port number, from 1."""

    def port(self, number: int) -> PortStatus | None:
        return self.ports.get(number)


# --- pure parser --------------------------------------------------------------------------------


class DeviceStatusError(ParseError):
    """The reply is not a GoIP's status.xml."""


# A value runs to its closing tag and never across another `lN_` tag: a field left open costs
# one scan to the next field, not one to the end of the page.
_FIELD: Final = re.compile(
    r"<l(?P<port>\d{1,3})_(?P<name>[a-z0-9_]{1,64})\s*"
    r"(?:/>|>(?P<value>(?:[^<]|<(?!/?l\d{1,3}_))*)</l(?P=port)_(?P=name)\s*>)",
    re.IGNORECASE,
)
_TAG: Final = re.compile(r"<[^<>]*>")
_ENTITY: Final = re.compile(r"&(?:amp|lt|gt|quot|apos|#\d{1,7}|#x[0-9a-f]{1,6});", re.IGNORECASE)
_YES: Final = frozenset({"Y", "YES", "1", "ON", "TRUE"})
_NO: Final = frozenset({"N", "NO", "0", "OFF", "FALSE"})


def _text(raw: str) -> str:
    # The device writes values raw: only well-formed entities are taken as escapes, so an
    # operator called "AT&T" stays as it is.
    stripped = _TAG.sub("", raw)
    return _ENTITY.sub(lambda m: html.unescape(m[0]), stripped).strip()


def _flag(fields: Mapping[str, str], name: str) -> bool | None:
    value = fields.get(name, "").upper()
    if value in _YES:
        return True
    if value in _NO:
        return False
    return None


def _csq(fields: Mapping[str, str]) -> int | None:
    value = fields.get("gsm_signal", "")
    if not (value.isascii() and value.isdigit()) or len(value) > 3:
        return None
    csq = int(value)
    return csq if 0 <= csq <= 31 else None


def parse_status_xml(body: bytes | str) -> DeviceStatus:
    """Every port the page shows. Raises DeviceStatusError when it shows none."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    found: dict[int, dict[str, str]] = {}
    for match in _FIELD.finditer(text):
        port = int(match["port"])
        if 1 <= port <= MAX_PORTS:
            found.setdefault(port, {})[match["name"].lower()] = _text(match["value"] or "")
    if not found:
        raise DeviceStatusError("status.xml: no lN_ fields (not a GoIP status page)")
    ports = {number: _port(number, fields) for number, fields in sorted(found.items())}
    return DeviceStatus(ports)


def _port(number: int, fields: dict[str, str]) -> PortStatus:
    def text(name: str) -> str | None:
        return fields.get(name) or None

    return PortStatus(
        port=number,
        module_on=_flag(fields, "module_status"),
        sim_present=_flag(fields, "gsm_sim"),
        gsm_registered=_flag(fields, "gsm_status"),
        csq=_csq(fields),
        operator=text("gsm_cur_oper"),
        line_state=text("line_state"),
        voip_registered=_flag(fields, "status_line"),
        sms_login=_flag(fields, "sms_login"),
        sim_remain=text("sim_remain"),
        sms_count=text("sms_count"),
        fields=fields,
    )


# --- HTTP, read leniently -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawReply:
    status: int
    headers: Mapping[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes


class HttpReplyError(ValueError):
    """A reply that is not HTTP, even read leniently."""


def parse_http_reply(data: bytes) -> RawReply:
    """An HTTP/1.x reply as an old embedded server writes it: header lines ending in LF or CRLF,
    the body by Content-Length, chunked, or up to the end of `data`. Raises HttpReplyError."""
    match = re.search(rb"\r?\n\r?\n", data[: MAX_HEADER_BYTES + 4])
    if match is None:
        raise HttpReplyError("no end of the headers")
    head, rest = data[: match.start()], data[match.end() :]
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    status_line = re.fullmatch(rb"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0])
    if status_line is None:
        raise HttpReplyError("no HTTP status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _unchunk(rest)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(rest) < length:
            raise HttpReplyError("the body is shorter than its Content-Length")
        body = rest[:length]
    else:
        body = rest
    return RawReply(int(status_line[1]), headers, body)


def _unchunk(data: bytes) -> bytes:
    chunks: list[bytes] = []
    at = 0
    while True:
        end = data.find(b"\n", at)
        if end < 0:
            raise HttpReplyError("a chunk size line is cut short")
        size_text = data[at:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpReplyError("a chunk size is not a number") from None
        if size == 0:
            return b"".join(chunks)
        start = end + 1
        if len(data) < start + size:
            raise HttpReplyError("a chunk is cut short")
        chunks.append(data[start : start + size])
        at = start + size
        at += 2 if data[at : at + 2] == b"\r\n" else 1 if data[at : at + 1] == b"\n" else 0


# --- client -------------------------------------------------------------------------------------


class DeviceClient:
    """One GoIP device's web status, read with its web login (HTTP Basic auth). `url` is the
    device's web address (`http://192.168.1.189`, or with a port or a path before
    /default/...)."""

    def __init__(
        self,
        name: str,
        url: str,
        username: str,
        password: SecretStr,
        *,
        timeout: float = DEFAULT_DEVICE_TIMEOUT,
        max_bytes: int = MAX_STATUS_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a device URL is http(s)://host[:port][/path]")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("a device URL has no credentials, query or fragment in it")
        self.name = name
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc
        self._path = parts.path.rstrip("/") + STATUS_PATH
        self._username = username
        self._password = password

    async def status(self) -> DeviceStatus:
        what = f"device {self.name} status"
        reply = await self._get(what)
        if reply.status == 401:
            scheme = reply.headers.get("www-authenticate", "").split(" ", 1)[0]
            hint = (
                f" (it asks for {scheme[:20]} auth)" if scheme.lower() not in ("", "basic") else ""
            )
            raise UpstreamError(
                ErrorReason.AUTH, f"{what}: HTTP 401, check the device's web login{hint}"
            )
        if reply.status != 200:
            raise UpstreamError(ErrorReason.HTTP_STATUS, f"{what}: HTTP {reply.status}")
        try:
            return parse_status_xml(reply.body)
        except ParseError as exc:
            raise UpstreamError(ErrorReason.PARSE, f"{what}: {exc}") from None

    def _request(self) -> bytes:
        login = f"{self._username}:{self._password.get_secret_value()}".encode()
        # The device caches the page: a new query each time, as its own web page does.
        path = quote(self._path, safe="/%") + f"?type=&ajaxcachebust={int(time.time() * 1000)}"
        return (
            f"GET {path} HTTP/1.0\r\n"
            f"Host: {self._host_header}\r\n"
            f"Authorization: Basic {base64.b64encode(login).decode()}\r\n"
            "User-Agent: goipd\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1", "replace")

    async def _get(self, what: str) -> RawReply:
        writer: asyncio.StreamWriter | None = None
        connected = False
        try:
            async with asyncio.timeout(self.timeout):
                context = ssl.create_default_context() if self._tls else None
                reader, writer = await asyncio.open_connection(self._host, self._port, ssl=context)
                connected = True
                writer.write(self._request())
                await writer.drain()
                data = await self._read(reader, what)
        except TimeoutError:
            raise UpstreamError(
                ErrorReason.TIMEOUT, f"{what}: no reply within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            reason = ErrorReason.DISCONNECTED if connected else ErrorReason.CONNECT
            raise UpstreamError(reason, f"{what}: {type(exc).__name__}") from None
        finally:
            if writer is not None:
                writer.close()
                with suppress(Exception):
                    await writer.wait_closed()
        if not data:
            raise UpstreamError(ErrorReason.DISCONNECTED, f"{what}: closed without a reply")
        try:
            return parse_http_reply(data)
        except HttpReplyError as exc:
            raise UpstreamError(
                ErrorReason.PARSE, f"{what}: unreadable HTTP reply: {exc}"
            ) from None

    async def _read(self, reader: asyncio.StreamReader, what: str) -> bytes:
        """Up to the close, or to the end of a Content-Length body: the connection is not
        reused, and a device may keep it open after the reply."""
        data = bytearray()
        while chunk := await reader.read(64 * 1024):
            data += chunk
            if len(data) > self.max_bytes:
                raise UpstreamError(
                    ErrorReason.PARSE, f"{what}: reply larger than {self.max_bytes} bytes"
                )
            if _complete(bytes(data)):
                break
        return bytes(data)


def _complete(data: bytes) -> bool:
    match = re.search(rb"\r?\n\r?\n", data[: MAX_HEADER_BYTES + 4])
    if match is None:
        return False
    length = re.search(rb"(?im)^content-length[ \t]*:[ \t]*(\d+)\r?$", data[: match.start()])
    return length is not None and len(data) - match.end() >= int(length[1])
