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
from goipd.upstream.http import read_capped

MAX_REPLY_BYTES = 16 * 1024 * 1024
MAX_FIELD_CHARS = 64
MAX_CONTENT_CHARS = 4096
MAX_DEVICE_TEXT_BYTES = 3000
"""The most text (UTF-8 bytes) a GoIP device takes in one send command."""
DEFAULT_SEND_TIMEOUT = 30.0
"""sendsms stores the task, then waits up to 3 x 5 s for the engine's OK before it answers."""
JSON_HEADERS = {"Content-Type": "application/json"}
SendState = Literal["succeeded", "failed", "unsend", "sending"]
RejectKind = Literal["none_line", "none_provider", "content_or_number", "unknown"]
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
    kind: RejectKind
    reason: str
    """The reason as the server wrote it."""


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
    goip_line: str | None
    """None when the server sent null: the line was renamed or deleted since."""
    from_number: str
    content: str
    recv_time: datetime | None
    """Server local time as sent; None when the field was missing or unreadable."""
    recv_time_raw: str


# --- pure parsers -------------------------------------------------------------------------------


class DatabaseFault(ValueError):
    """The SMS Server answered with its database's failure instead of JSON (HTTP 200): `Bad
    query: <error>(<the SQL>)` or `Could not connect`. Nothing was stored that will be sent.
    The message never holds the echoed SQL: it contains the SMS text."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply body as the server wrote it: the JSON, and the PHP diagnostics printed before it
    (a server without php-mbstring prints `Warning: need install php-mbstring module<br>`
    before every sendsms answer)."""

    body: bytes
    diagnostics: tuple[str, ...] = ()


# PHP prints diagnostics as `Warning: text<br>` (the vendor's own echo), `<br />\n<b>Warning</b>:
# text in <b>file</b> on line <b>N</b><br />` (html_errors on) or `Warning: text in file on
# line N` followed by a newline (html_errors off).
_PHP_DIAGNOSTIC = re.compile(
    rb"\s*(?:<br\s*/?>\s*)*(?:<b>)?(?:PHP )?"
    rb"(Warning|Notice|Deprecated|Strict Standards|Fatal error|Parse error)(?:</b>)?:"
    rb"[ \t]*(.*?)(?:<br\s*/?>|\r?\n|\Z)",
    re.DOTALL,
)
_TAG = re.compile(r"<[^>]*>")
MAX_DIAGNOSTIC_CHARS = 200


def read_reply(body: bytes) -> Reply:
    """The JSON part of a reply and the PHP diagnostics before it; raises DatabaseFault for a
    database failure. Anything else is left for the JSON parser to judge."""
    diagnostics: list[str] = []
    rest = body
    while True:
        match = _PHP_DIAGNOSTIC.match(rest)
        if match is None or match.end() == 0:
            break
        kind = match.group(1).decode("ascii")
        text = _TAG.sub("", match.group(2).decode("utf-8", "replace")).strip()
        diagnostics.append(f"{kind}: {text}"[:MAX_DIAGNOSTIC_CHARS])
        rest = rest[match.end() :]
    # Only the start is looked at: a poll's whole reply is not copied for it.
    head = rest[:64].lstrip()
    if head.startswith(b"Bad query:"):
        kind = "SQL syntax error" if b"SQL syntax" in rest[:200] else "database error"
        raise DatabaseFault(
            f"the SMS Server's database refused the request (Bad query: {kind}); "
            "the SQL it echoed is not kept"
        )
    if head.startswith(b"Could not connect"):
        raise DatabaseFault("the SMS Server cannot reach its database (Could not connect)")
    return Reply(rest, tuple(diagnostics))


def escape_for_sql(text: str) -> str:
    """Text as v1.28.4's sendsms must receive it so the phone gets exactly `text`: the server
    puts what it gets into a single-quoted MySQL literal unescaped (backslash escapes on), so
    `'` would end the literal (`Bad query`, nothing sent) and `\\n` would become a newline."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def server_parts(text: str, *, mbstring: bool = True) -> int:
    """SMS parts the SMS Server counts against a line's quota for `text` as posted (its own
    formula, not GSM's): with php-mbstring, a text holding non-ASCII counts characters, 1 part
    up to 70, then one per 67; otherwise it counts bytes, 1 part up to 160, then one per 153.
    Without php-mbstring every text counts bytes."""
    size = len(text.encode("utf-8"))
    if mbstring and size != len(text):
        chars = len(text)
        return 1 if chars <= 70 else -(-chars // 67)
    return 1 if size <= 160 else -(-size // 153)


class TextParts:
    """The parts one text counts for on each kind of server (escaped for SQL or not, with or
    without php-mbstring), each computed once."""

    __slots__ = ("_counts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._counts: dict[tuple[bool, bool], int] = {}

    def for_server(self, *, escape: bool, mbstring: bool) -> int:
        key = (escape, mbstring)
        count = self._counts.get(key)
        if count is None:
            posted = escape_for_sql(self.text) if escape else self.text
            count = self._counts[key] = server_parts(posted, mbstring=mbstring)
        return count


def goip_refusal(text: str) -> tuple[str, str] | None:
    """Why a GoIP hop cannot carry `text` exactly, as (error code, meaning); None if it can.
    Checked before any task is created, so the text goes to the route's next hop instead."""
    if any(ord(ch) > 0xFFFF for ch in text):
        return (
            "goip_text_unsupported",
            "holds a character beyond U+FFFF (an emoji, say): the GoIP SMS Server's database "
            "stores 3-byte UTF-8 and would cut the text there",
        )
    if len(text.encode("utf-8")) > MAX_DEVICE_TEXT_BYTES:
        return (
            "goip_text_too_long",
            f"longer than the {MAX_DEVICE_TEXT_BYTES} bytes a GoIP device takes per send",
        )
    return None


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
        reason = _text(data, "reason", required=False) or ""
        return SendRejected(_REJECT_KINDS.get(reason, "unknown"), reason)
    raise ParseError(f"sendsms: result must be ACCEPT or REJECT, got {str(result)[:20]!r}")


_REJECT_KINDS: dict[str, RejectKind] = {
    "none_line": "none_line",
    "none_provider": "none_provider",
    # v1.28.4: empty text or number, and PHP's empty() also holds for the text "0".
    "content or number error": "content_or_number",
}
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


def _content(data: dict[str, Any]) -> str:
    """An SMS text exactly as sent: its spaces and line breaks are the sender's (and the inbox
    shows them, so a push and its inbox row must agree)."""
    value = data.get("content")
    if value is None:
        raise ParseError("missing field 'content'")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ParseError(f"field 'content' must be a string, got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_CONTENT_CHARS:
        raise ParseError(f"field 'content' is longer than {MAX_CONTENT_CHARS} characters")
    return text


def parse_inbound_push(body: bytes | str) -> InboundSms:
    data = loads_lenient(body)
    if not isinstance(data, dict):
        raise ParseError(f"inbound: expected a JSON object, got {type(data).__name__}")
    goip_line = _text(data, "goip_line", required=False) or None
    from_number = _required(data, "from_number")
    content = _content(data)
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
    escape: bool = False,
) -> dict[str, str]:
    """`escape`: the server puts the values into its SQL as they come (v1.28.4), so they are
    escaped for it (escape_for_sql)."""
    if not numbers or len(numbers) > 9999:
        raise ValueError("sendsms takes 1 to 9999 numbers")
    quote = escape_for_sql if escape else _as_is
    body = {"number": quote(",".join(numbers)), "content": quote(content)}
    if goip_line is not None:
        body["goip_line"] = quote(goip_line)
    elif provider is not None:
        body["provider"] = quote(provider)
    return body


def _as_is(text: str) -> str:
    return text


# --- client -------------------------------------------------------------------------------------


POOL_SIZES = {"send": 8, "poll": 4}
"""Connections kept per SMS Server, for sendsms and for everything else."""
MBSTRING_MISSING = "php_mbstring_missing"
OTHER_PHP_WARNING = "php_warning"
SETUP_FIXES = {
    MBSTRING_MISSING: "install php-mbstring on the SMS Server and restart its web server",
    OTHER_PHP_WARNING: "read the warning in goipd's log and fix the SMS Server's PHP setup",
}
"""Setup problems a server's replies show, by key (a metric label: the set is closed)."""


def setup_problem(diagnostic: str) -> str:
    return MBSTRING_MISSING if "php-mbstring" in diagnostic else OTHER_PHP_WARNING


class GoipClient:
    """One GoIP SMS Server. Polls and sends use separate connection pools: a send may wait
    ~15 s for a slow engine, and polls must not queue behind it."""

    def __init__(
        self,
        name: str,
        base_url: str,
        username: str,
        password: SecretStr,
        timeout: float,
        *,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        escape_text: bool = True,
        on_diagnostics: Callable[[str, tuple[str, ...]], None] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.escape_text = escape_text
        self.on_diagnostics = on_diagnostics
        """Called with the API and the PHP diagnostics a reply started with."""
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._auth_json: str | None = None

    def _get_session(self, api: str) -> aiohttp.ClientSession:
        pool = "send" if api == "sendsms" else "poll"
        session = self._sessions.get(pool)
        if session is None or session.closed:
            session = self._sessions[pool] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self.send_timeout if pool == "send" else self.timeout
                ),
                # Polls and queries go one after another; sends may run side by side.
                connector=aiohttp.TCPConnector(limit=POOL_SIZES[pool], ttl_dns_cache=300),
                raise_for_status=False,
            )
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

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
        body = build_sendsms(
            numbers, content, goip_line=goip_line, provider=provider, escape=self.escape_text
        )
        return await self._exchange("sendsms", body, parse_sendsms)

    async def query_sms(self, task_id: str) -> list[SendReport]:
        return await self._exchange("querysms", {"taskID": task_id}, parse_querysms)

    async def _exchange(self, api: str, params: dict[str, str], parse: Callable[[bytes], _T]) -> _T:
        body = await self._post(api, params)
        try:
            reply = read_reply(body)
        except DatabaseFault as exc:
            raise UpstreamError(ErrorReason.SERVER_DATABASE, f"{api}: {exc}") from None
        if reply.diagnostics and self.on_diagnostics is not None:
            self.on_diagnostics(api, reply.diagnostics)
        try:
            return parse(reply.body)
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
            async with self._get_session(api).post(url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status == 401:
                    raise UpstreamError(
                        ErrorReason.AUTH, f"{api}: HTTP 401, check username/password"
                    )
                if resp.status >= 300:
                    raise UpstreamError(ErrorReason.HTTP_STATUS, f"{api}: HTTP {resp.status}")
                reply = await read_capped(resp.content, MAX_REPLY_BYTES)
                if reply is None:
                    raise UpstreamError(ErrorReason.PARSE, f"{api}: reply larger than 16 MiB")
                return reply
        except UpstreamError:
            raise
        except TimeoutError:
            limit = self.send_timeout if api == "sendsms" else self.timeout
            raise UpstreamError(ErrorReason.TIMEOUT, f"{api}: no reply within {limit:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            # No connection was made, so the request was never written.
            raise UpstreamError(ErrorReason.CONNECT, f"{api}: {exc.__class__.__name__}") from None
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
            aiohttp.ClientPayloadError,
        ) as exc:
            raise UpstreamError(
                ErrorReason.DISCONNECTED, f"{api}: {exc.__class__.__name__}"
            ) from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(ErrorReason.HTTP_STATUS, f"{api}: HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(ErrorReason.CONNECT, f"{api}: {exc.__class__.__name__}") from None
