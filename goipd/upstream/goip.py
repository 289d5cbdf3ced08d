"""GoIP SMS Server JSON API (v1.27+): request builders, pure reply parsers, async client.

Real servers deviate from their own document in small ways
(docs/goip-sms-server.md#reply-quirks-goipd-accepts): numbers come as strings, arrays end with a
trailing comma, `goip_line` may be the string "null", `reg` may be empty, and replies are
labelled `text/html`. The parsers accept all of that and raise `ParseError` for anything else;
the client turns every failure into an `UpstreamError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import aiohttp
from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError

MAX_REPLY_BYTES = 16 * 1024 * 1024
MAX_FIELD_CHARS = 64
MAX_CONTENT_CHARS = 4096
JSON_HEADERS = {"Content-Type": "application/json"}
SendState = Literal["succeeded", "failed", "unsend", "sending"]
RejectReason = Literal["none_line", "none_provider", "unknown"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LineStatus:
    line_id: str
    online: bool
    registered: bool
    reg_raw: str
    remain_sms: int | None
    """Total quota left; None = unlimited ("-1")."""
    day_remain_sms: int | None
    """Today's quota left; None = unlimited ("-1")."""


@dataclass(frozen=True, slots=True)
class SendAccepted:
    task_id: str


@dataclass(frozen=True, slots=True)
class SendRejected:
    reason: RejectReason


SendReply = SendAccepted | SendRejected


@dataclass(frozen=True, slots=True)
class SendReport:
    sub_task_id: str
    task_id: str
    number: str
    goip_line: str | None
    send: SendState
    err_code: str | None
    receipt: bool


@dataclass(frozen=True, slots=True)
class InboundSms:
    goip_line: str
    from_number: str
    content: str
    recv_time: datetime | None
    """Server local time as sent; None when the field was missing or unreadable."""
    recv_time_raw: str


# --- pure parsers -------------------------------------------------------------------------------


def loads_lenient(body: bytes | str) -> Any:
    """json.loads that also accepts the vendor's trailing commas (`...},\\n]`) and a UTF-8 BOM."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ParseError(f"reply is not UTF-8 (byte {exc.start})") from None
    else:
        text = body.lstrip("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise ParseError("invalid JSON: nested too deeply") from None
    except ValueError:
        # Python refuses integers of more than 4300 digits (CVE-2020-10735 guard).
        raise ParseError("invalid JSON: number too long") from None
    try:
        return json.loads(_strip_trailing_commas(text))
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ParseError("invalid JSON: nested too deeply") from None
    except ValueError:
        raise ParseError("invalid JSON: number too long") from None


# Walking the reply character by character in Python was a fifth of the CPU of polling
# servers that send these commas; the work is done by the regex engine and str.count instead.
_TRAILING_COMMA = re.compile(r",(?=\s*[\]}])")
# Text up to the next trailing comma outside strings (a string left open runs to the end),
# or that comma with what follows it; possessive, so every position matches at once.
_UP_TO_TRAILING_COMMA = re.compile(
    r'((?:[^",]++|"(?:[^"\\]++|\\.)*+"?|,(?!\s*+[\]}]))++)|,(\s*+[\]}])', re.DOTALL
)


def _strip_trailing_commas(text: str) -> str:
    """Drop commas that are followed only by whitespace and a closing bracket, outside strings."""
    if "\\" in text:
        return _UP_TO_TRAILING_COMMA.sub(r"\1\2", text)
    # Without backslashes every quote opens or closes a string: a comma is outside strings
    # when an even number of quotes come before it.
    parts: list[str] = []
    copied = counted = quotes = 0
    for match in _TRAILING_COMMA.finditer(text):
        at = match.start()
        quotes += text.count('"', counted, at)
        counted = at
        if quotes % 2 == 0:
            parts.append(text[copied:at])
            copied = at + 1
    if not parts:
        return text
    parts.append(text[copied:])
    return "".join(parts)


def _text(
    obj: dict[str, Any], key: str, *, required: bool = True, limit: int = MAX_FIELD_CHARS
) -> str | None:
    value = obj.get(key)
    if value is None or value == "null":
        if required:
            raise ParseError(f"missing field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ParseError(f"field {key!r} must be a string or number, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > limit:
        raise ParseError(f"field {key!r} is longer than {limit} characters")
    return text


def _required(obj: dict[str, Any], key: str, limit: int = MAX_FIELD_CHARS) -> str:
    value = _text(obj, key, required=True, limit=limit)
    if value is None:  # _text raises for required fields; this keeps the type exact
        raise ParseError(f"missing field {key!r}")
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool):
        raise ParseError(f"field {key!r} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ParseError(f"field {key!r} must be an integer, got {_describe(value)}")


def _describe(value: object) -> str:
    if isinstance(value, str):
        return repr(value[:20])
    return type(value).__name__


def _quota(obj: dict[str, Any], key: str) -> int | None:
    if obj.get(key) in (None, "", "null"):
        # A server without a quota configured leaves the field empty: that is "no limit".
        return None
    value = _int(obj, key)
    if value < -1:
        raise ParseError(f"field {key!r} must be -1 or a count, got {value}")
    return None if value == -1 else value


def _objects(data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ParseError(f"{what}: expected a JSON array, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ParseError(f"{what}[{index}]: expected an object, got {type(item).__name__}")
    return data


def parse_querylines(body: bytes | str) -> list[LineStatus]:
    lines: list[LineStatus] = []
    seen: set[str] = set()
    for index, obj in enumerate(_objects(loads_lenient(body), "querylines")):
        try:
            line_id = _required(obj, "goip_line")
            if not line_id:
                raise ParseError("empty 'goip_line'")
            online_raw = obj.get("online")
            online = str(online_raw).strip() in ("1", "true", "True")
            reg = _text(obj, "reg", required=False) or ""
            line = LineStatus(
                line_id=line_id,
                online=online,
                registered=reg.upper() == "LOGIN",
                reg_raw=reg,
                remain_sms=_quota(obj, "remain_sms"),
                day_remain_sms=_quota(obj, "day_remain_sms"),
            )
        except ParseError as exc:
            raise ParseError(f"querylines[{index}]: {exc}") from None
        if line_id in seen:
            raise ParseError(f"querylines[{index}]: line {line_id!r} listed twice")
        seen.add(line_id)
        lines.append(line)
    return lines


def parse_sendsms(body: bytes | str) -> SendReply:
    data = loads_lenient(body)
    if not isinstance(data, dict):
        raise ParseError(f"sendsms: expected a JSON object, got {type(data).__name__}")
    result = _text(data, "result")
    if result == "ACCEPT":
        task_id = _required(data, "taskID")
        if not (task_id.isascii() and task_id.isdigit()):
            raise ParseError(f"sendsms: taskID must be an integer, got {task_id[:20]!r}")
        return SendAccepted(task_id)
    if result == "REJECT":
        reason = _text(data, "reason", required=False) or "unknown"
        if reason == "none_line":
            return SendRejected("none_line")
        if reason == "none_provider":
            return SendRejected("none_provider")
        return SendRejected("unknown")
    raise ParseError(f"sendsms: result must be ACCEPT or REJECT, got {str(result)[:20]!r}")


_SEND_STATES: dict[str, SendState] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "unsend": "unsend",
    "sending": "sending",
}


def parse_report(obj: Any) -> SendReport:
    """One send-result object, as pushed or as an element of a querysms reply."""
    if not isinstance(obj, dict):
        raise ParseError(f"report: expected a JSON object, got {type(obj).__name__}")
    sub_task_id = _required(obj, "taskID")
    task_id, dot, number = sub_task_id.partition(".")
    if not dot or not (task_id.isascii() and task_id.isdigit()) or not number:
        raise ParseError(f"report: taskID must look like <task>.<number>, got {sub_task_id!r}")
    send_raw = _text(obj, "send")
    send = _SEND_STATES.get(send_raw or "")
    if send is None:
        raise ParseError(f"report: unknown send state {str(send_raw)[:20]!r}")
    err_code = _text(obj, "err_code", required=False) or None
    receipt = str(obj.get("receipt", "")).strip() == "1"
    return SendReport(
        sub_task_id=sub_task_id,
        task_id=task_id,
        number=number,
        goip_line=_text(obj, "goip_line", required=False) or None,
        send=send,
        err_code=err_code,
        receipt=receipt,
    )


def parse_status_push(body: bytes | str) -> SendReport:
    return parse_report(loads_lenient(body))


def parse_querysms(body: bytes | str) -> list[SendReport]:
    reports = []
    for index, obj in enumerate(_objects(loads_lenient(body), "querysms")):
        try:
            reports.append(parse_report(obj))
        except ParseError as exc:
            raise ParseError(f"querysms[{index}]: {exc}") from None
    return reports


def parse_inbound_push(body: bytes | str) -> InboundSms:
    data = loads_lenient(body)
    if not isinstance(data, dict):
        raise ParseError(f"inbound: expected a JSON object, got {type(data).__name__}")
    goip_line = _required(data, "goip_line")
    from_number = _required(data, "from_number")
    content = _required(data, "content", limit=MAX_CONTENT_CHARS)
    recv_raw = _text(data, "recv_time", required=False) or ""
    try:
        recv_time: datetime | None = datetime.strptime(recv_raw, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        recv_time = None
    return InboundSms(goip_line, from_number, content, recv_time, recv_raw)


# --- request builders ---------------------------------------------------------------------------


def build_sendsms(
    numbers: Sequence[str],
    content: str,
    *,
    goip_line: str | None = None,
    provider: str | None = None,
) -> dict[str, str]:
    if not numbers or len(numbers) > 9999:
        raise ValueError("sendsms takes 1 to 9999 numbers")
    body = {"number": ",".join(numbers), "content": content}
    if goip_line is not None:
        body["goip_line"] = goip_line
    elif provider is not None:
        body["provider"] = provider
    return body


# --- client -------------------------------------------------------------------------------------


class GoipClient:
    """One GoIP SMS Server. Owns one ClientSession (connection pool) for its whole life."""

    def __init__(
        self, name: str, base_url: str, username: str, password: SecretStr, timeout: float
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._auth_json: str | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=8, ttl_dns_cache=300),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query_lines(self) -> list[LineStatus]:
        return await self._exchange("querylines", {}, parse_querylines)

    async def send_sms(
        self,
        numbers: Sequence[str],
        content: str,
        *,
        goip_line: str | None = None,
        provider: str | None = None,
    ) -> SendReply:
        body = build_sendsms(numbers, content, goip_line=goip_line, provider=provider)
        return await self._exchange("sendsms", body, parse_sendsms)

    async def query_sms(self, task_id: str) -> list[SendReport]:
        return await self._exchange("querysms", {"taskID": task_id}, parse_querysms)

    async def _exchange(self, api: str, params: dict[str, str], parse: Callable[[bytes], _T]) -> _T:
        body = await self._post(api, params)
        try:
            return parse(body)
        except ParseError as exc:
            raise UpstreamError(ErrorReason.PARSE, f"{api}: {exc}") from None

    def _request_body(self, params: dict[str, str]) -> bytes:
        """`{"auth": {...}, **params}` as JSON bytes, as aiohttp's json= would write it, with
        the auth part encoded once per client rather than once per request."""
        if self._auth_json is None:
            auth = {"username": self._username, "password": self._password.get_secret_value()}
            self._auth_json = '{"auth": ' + json.dumps(auth)
        if not params:
            return (self._auth_json + "}").encode()
        return (self._auth_json + ", " + json.dumps(params)[1:]).encode()

    async def _post(self, api: str, params: dict[str, str]) -> bytes:
        url = f"{self.base_url}/goip/{api}/"
        body = self._request_body(params)
        try:
            async with self._get_session().post(url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status == 401:
                    raise UpstreamError(
                        ErrorReason.AUTH, f"{api}: HTTP 401, check username/password"
                    )
                if resp.status >= 300:
                    raise UpstreamError(ErrorReason.HTTP_STATUS, f"{api}: HTTP {resp.status}")
                body = await resp.content.read(MAX_REPLY_BYTES + 1)
                if len(body) > MAX_REPLY_BYTES:
                    raise UpstreamError(ErrorReason.PARSE, f"{api}: reply larger than 16 MiB")
                return body
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError(
                ErrorReason.TIMEOUT, f"{api}: no reply within {self.timeout:g}s"
            ) from None
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
            aiohttp.ClientPayloadError,
        ) as exc:
            raise UpstreamError(ErrorReason.CONNECT, f"{api}: {exc.__class__.__name__}") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(ErrorReason.HTTP_STATUS, f"{api}: HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(ErrorReason.CONNECT, f"{api}: {exc.__class__.__name__}") from None
