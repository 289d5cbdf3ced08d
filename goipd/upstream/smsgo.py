"""smsgo (簡訊購, Taiwan) HTTP API 6.2: number and text rules, pure parsers, async client.

Every call is a GET with the credentials in the query string (the API has no other way), so
URLs are never logged and error details are built from status codes and parser messages only.

What the document leaves open, and what this module does about it:
- Send replies come as text (`msgid=..\\nstatuscode=..\\nstatusstr=..\\npoint=..`) or JSON
  (`rtype=JSON`); the client asks for JSON and the parser reads both. The document names an
  XML form but never shows it, so there is no XML parser.
- One call takes up to 50 numbers and returns one msgid for all of them; status queries and
  delivery reports are per (msgid, number) (`query.asp` takes both, reports carry `dstaddr`).
- Balance and cancel replies are not shown as text: the parsers read the JSON shape the
  document shows for `query_point.asp`, the send reply's `key=value` lines, or a bare number.
- Status words are those of table 2 ("final message states") plus the SMPP message-state names
  the table abbreviates; a message not final yet is reported with the SMPP names SCHEDULED
  (waiting for its `dlvtime`) and ENROUTE (sent, no receipt yet). Unknown words are pending.
- Long SMS (`L*` encodings) take up to 330 characters and exist for Taiwan numbers only
  (international sends allow BIG5/ASCII/UCS2); `replyurl` works only with single-SMS encodings.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Final, TypeVar
from urllib.parse import quote

import structlog
from pydantic import SecretStr
from yarl import URL

from goipd.config import SmsgoSettings
from goipd.model import State
from goipd.upstream.cloud import CloudInbound, CloudSendResult, CloudStatus, Verdict
from goipd.upstream.errors import AMBIGUOUS_REASONS, ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip import loads_lenient
from goipd.upstream.http import HttpClient, read_limited, transport_errors
from goipd.upstream.segments import GSM7_EXTENSION, is_gsm7

log = structlog.get_logger("goipd.upstream.smsgo")

_T = TypeVar("_T")

MAX_BATCH: Final = 50
"""Numbers per send call (document: "不可超過 50 筆")."""
MAX_REPLYURL_CHARS: Final = 300
SINGLE_LIMITS: Final = {"ASCII": 160, "UCS2": 70}
LONG_LIMIT: Final = 330
"""Characters of one long SMS (LASCII/LUCS2): "目前長簡訊只支援 330 個中文字"."""
LONG_ENCODINGS: Final = {"ASCII": "LASCII", "UCS2": "LUCS2"}
ENCODINGS: Final = frozenset(
    {"BIG5", "ASCII", "UCS2", "PBIG5", "PASCII", "LBIG5", "LASCII", "LUCS2", "PUSH"}
)
REPLY_ENCODINGS: Final = frozenset({"BIG5", "ASCII", "UCS2"})
"""The only encodings `replyurl`/`replydays` work with, and the only ones abroad."""
TAIWAN: Final = timezone(timedelta(hours=8), "Asia/Taipei")
DLVTIME_FORMAT: Final = "%Y/%m/%d %H:%M:%S"
ACK_MAGIC: Final = "tccrd_sms_gateway_rpack"
MAX_REPLY_BYTES: Final = 1024 * 1024
MAX_FIELD_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 4096
MAX_QUERY_LINES: Final = 10_000

SEND_PATH: Final = "sendsms.aspx"
QUERY_PATH: Final = "query.asp"
QUERY_BULK_PATH: Final = "queryBulk.asp"
POINT_PATH: Final = "query_point.asp"
CANCEL_PATH: Final = "sendsms_cancel.asp"

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_TW_MOBILE_E164 = re.compile(r"\+8869[0-9]{8}")
_DOMESTIC = re.compile(r"09[0-9]{8}")
_PHONE = re.compile(r"[+ ]?[0-9]{6,20}")
_MSGID = re.compile(r"[0-9]{1,32}")
_KEY = re.compile(r"[a-z_]{1,32}")
_INT = re.compile(r"[+-]?[0-9]{1,12}")
_WORD = re.compile(r"[A-Za-z_]{0,32}")

# --- status codes and words --------------------------------------------------------------------

# Table 1 (statuscode of a request). The judgement behind each verdict is in the comment:
# DISABLE = an account problem no retry fixes, FAILED = this message or number can never go,
# RETRY = may work later or elsewhere (dispatch bounds the attempts).
BALANCE_CLEARS: Final = frozenset({"-2", "-8"})
"""Authorization and credit: a balance answer with points says both are fixed."""

SEND_CODES: Final[dict[int, tuple[Verdict, str]]] = {
    0: (Verdict.ACCEPTED, "OK"),
    # "CGI string error or Unknow": malformed request (the FAQ: usually an empty text, which
    # send() refuses itself) or an unknown server fault; retrying a few times is cheap.
    -1: (Verdict.RETRY, "CGI string error or unknown error"),
    -2: (
        Verdict.DISABLE,
        "authorization failed (wrong username, password or API key, or IP not allowed)",
    ),
    # "User設定太高的優先權": a setting of the account; goipd sends no priority.
    -3: (Verdict.DISABLE, "priority error (the account's priority is set too high)"),
    # The A number is the sender; goipd sends none, so the account's sender setting is wrong.
    -4: (Verdict.DISABLE, "sender (A) number breaks the rules"),
    -5: (Verdict.FAILED, "recipient (B) number breaks the rules"),
    # "User" in this table is the account holder (see -3): the account is closed.
    -6: (Verdict.DISABLE, "closed user (the account is closed)"),
    # The encoding is a function of the text: the same text always fails the same way.
    -7: (Verdict.FAILED, "invalid encoding"),
    -8: (Verdict.DISABLE, "not enough points (credit)"),
    # After isolation this is one number the provider cannot count as a recipient.
    -9: (Verdict.FAILED, "invalid number of recipients (msisdn amount)"),
    -10: (Verdict.RETRY, "send failed"),
}
ISOLATE_CODES: Final = frozenset({-5, -9})
"""Codes that blame a number of a batch without naming it: the batch is re-sent one by one."""

# Table 2, keyed by the statusstr word. ACCEPTD and UNKNOWN are no outcome goipd can act on:
# the recipient stays `sent`, waiting for a later word or the report deadline.
STATUS_WORDS: Final[dict[str, tuple[State, str]]] = {
    "DELIVRD": (State.DELIVERED, "message is delivered to destination"),
    "EXPIRED": (State.FAILED, "message validity period has expired"),
    "DELETED": (State.FAILED, "message has been deleted"),
    "UNDELIV": (State.FAILED, "message is undeliverable"),
    "ABSENT": (State.FAILED, "phone number does not exist"),
    "SPAM": (State.FAILED, "message content is spam"),
    "BLOCK": (State.FAILED, "recipient rejects the message"),
    "ACCEPTD": (
        State.SENT,
        "message is in accepted state (read on the subscriber's behalf by customer service)",
    ),
    "UNKNOWN": (State.SENT, "message is in an invalid state"),
    "REJECTD": (State.FAILED, "message is in a rejected state"),
    "SYNTAXE": (State.FAILED, "syntax error"),
    # Not in table 2: SMPP states of a message that is not final yet (see module docstring).
    "SCHEDULED": (State.QUEUED, "scheduled, waiting for its delivery time"),
    "ENROUTE": (State.SENT, "sent to the network, no delivery report yet"),
}
# Table 2's "Message State" column names the same states in full.
STATUS_ALIASES: Final = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
    "SYNTAXERROR": "SYNTAXE",
}


def send_verdict(statuscode: int) -> tuple[Verdict, str]:
    """Verdict and English meaning of a send's statuscode (table 1)."""
    known = SEND_CODES.get(statuscode)
    if known is not None:
        return known
    return Verdict.RETRY, f"status code {statuscode} is not in the smsgo document"


def status_state(statusstr: str) -> tuple[State, str, str]:
    """Recipient state, code (the canonical word) and English meaning of a status word."""
    word = statusstr.strip().upper()
    word = STATUS_ALIASES.get(word, word)
    known = STATUS_WORDS.get(word)
    if known is not None:
        return known[0], word, known[1]
    if not word:
        return State.SENT, "", "no status yet"
    return State.SENT, word, "status word not in the smsgo document; still pending"


# --- numbers, text, time -----------------------------------------------------------------------


def to_smsgo_number(e164: str) -> str:
    """`+8869xxxxxxxx` → `09xxxxxxxx` (Taiwan mobiles); other numbers stay `+<cc><number>`.

    Raises ValueError for anything that is not an E.164 number smsgo can take.
    """
    if not _E164.fullmatch(e164):
        raise ValueError("not an E.164 number (+ and 7 to 15 digits)")
    if e164.startswith("+8869"):
        if not _TW_MOBILE_E164.fullmatch(e164):
            raise ValueError("a Taiwan mobile number has 9 digits after +886")
        return "0" + e164[4:]
    return e164


def from_smsgo_number(number: str) -> str:
    """The E.164 form of a number as smsgo writes it (`09..` domestic, `+cc..` abroad).

    A `+` that reached us unencoded decodes as a space, so a leading space counts as `+`.
    """
    digits = number.strip()
    if number.startswith((" ", "+")):
        return "+" + digits.lstrip("+")
    if digits.startswith("00"):
        return "+" + digits[2:]
    if digits.startswith("0"):
        return "+886" + digits[1:]
    return "+" + digits


def is_domestic(smsgo_number: str) -> bool:
    return _DOMESTIC.fullmatch(smsgo_number) is not None


@dataclass(frozen=True, slots=True)
class TextPlan:
    encoding: str
    """ASCII, UCS2, LASCII or LUCS2."""
    units: int
    """Characters as the limits count them (conservatively, see `plan_text`)."""
    long: bool
    too_long: bool


def plan_text(text: str) -> TextPlan:
    """The encoding smsgo should get for `text`.

    ASCII only when every character is ASCII *and* in the GSM 7-bit alphabet (smsgo sends ASCII
    as GSM 7-bit, where a backtick does not exist); UCS2 otherwise. GSM extension characters
    (`[`, `{`, ...) count twice and characters outside the BMP count as two UTF-16 units, so a
    text judged to fit really fits. Above the single-SMS limit the long encoding is used; above
    330 units the text does not fit one smsgo message at all.
    """
    if text.isascii() and is_gsm7(text):
        base, units = "ASCII", len(text) + sum(text.count(c) for c in GSM7_EXTENSION)
    else:
        base, units = "UCS2", len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= SINGLE_LIMITS[base]:
        return TextPlan(base, units, long=False, too_long=False)
    return TextPlan(LONG_ENCODINGS[base], units, long=True, too_long=units > LONG_LIMIT)


def _utf8_ok(text: str) -> bool:
    # JSON lets a lone surrogate (\ud800) into a str; UTF-8, and so the URL, cannot hold it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def format_dlvtime(unix_time: float) -> str:
    """`dlvtime` is Taiwan local time (UTC+8, no daylight saving)."""
    return datetime.fromtimestamp(unix_time, TAIWAN).strftime(DLVTIME_FORMAT)


def report_ack(msgid: str) -> str:
    """The exact body smsgo expects back for a delivery report (else it retries 3 times).

    `msgid` must be the one `parse_report` returned (validated digits).
    """
    return f"magicid={ACK_MAGIC}\nmsgid={msgid}\n"


# --- reply types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendReply:
    msgid: str | None
    """Set when statuscode is 0; error replies carry a negative msgid, dropped here."""
    statuscode: int
    statusstr: str
    point: float | None
    """Points this send cost."""


@dataclass(frozen=True, slots=True)
class StatusLine:
    """One line of `query.asp` / `queryBulk.asp`."""

    statuscode: int
    statusstr: str
    phone: str | None
    msgid: str | None
    """Only `queryBulk.asp` lines name their msgid."""


@dataclass(frozen=True, slots=True)
class BalanceReply:
    statuscode: int
    statusstr: str
    point: float | None


@dataclass(frozen=True, slots=True)
class CancelReply:
    statuscode: int
    statusstr: str


# --- pure parsers ------------------------------------------------------------------------------


def _decode(body: bytes | str, what: str) -> str:
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # Pages of the pre-6.0 .asp endpoints were Big5; a Big5 status text is still text.
            try:
                text = body.decode("big5")
            except UnicodeDecodeError:
                raise ParseError(f"{what}: reply is neither UTF-8 nor Big5") from None
    else:
        text = body
    text = text.lstrip("\ufeff").strip()
    if text.startswith("<"):
        raise ParseError(f"{what}: an HTML or XML page, not an smsgo reply")
    return text


def _load_json(text: str, what: str) -> Any:
    try:
        return loads_lenient(text)
    except ParseError as exc:
        raise ParseError(f"{what}: {exc}") from None
    except ValueError:
        # json turns a 5,000-digit number into a plain ValueError (int conversion limit).
        raise ParseError(f"{what}: invalid JSON: a number is too long") from None


def _json_entries(data: Any, what: str) -> list[dict[str, Any]]:
    """`{"result": {...}}` (send) or `{"results": {"result": [...]}}` (queries), keys lowered."""
    if not isinstance(data, dict):
        raise ParseError(f"{what}: expected a JSON object, got {type(data).__name__}")
    container: Any = data
    if "results" in data:
        container = data["results"]
        if not isinstance(container, dict):
            raise ParseError(f"{what}: 'results' must be an object")
    if "result" not in container:
        raise ParseError(f"{what}: no 'result' in the JSON reply")
    result = container["result"]
    items = result if isinstance(result, list) else [result]
    entries = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ParseError(f"{what}: result[{index}] must be an object")
        entries.append({str(key).lower(): value for key, value in item.items()})
    return entries


def _reply_fields(text: str, what: str, *, exactly_one: bool = False) -> Mapping[str, Any]:
    """The fields of a reply: its JSON form's (first) result, or its `key=value` lines."""
    if not text.startswith("{"):
        return _kv_lines(text, what)
    entries = _json_entries(_load_json(text, what), what)
    if exactly_one and len(entries) != 1:
        raise ParseError(f"{what}: expected one result, got {len(entries)}")
    if not entries:
        raise ParseError(f"{what}: the result list is empty")
    return entries[0]


def _kv_lines(text: str, what: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for index, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not _KEY.fullmatch(key):
            raise ParseError(f"{what}: line {index} is not key=value")
        if key in fields:
            raise ParseError(f"{what}: {key!r} appears twice")
        fields[key] = value.strip()
    return fields


def _show(value: object) -> str:
    """A short rendering of a bad value for a parser message (never a whole reply)."""
    if isinstance(value, str):
        return repr(value[:16])
    return type(value).__name__


def _int(value: object, key: str, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10**12:
            return value
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise ParseError(f"{what}: {key} must be an integer, got {_show(value)}")


def _float(value: object, key: str, what: str) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e15 else None
    elif isinstance(value, str) and len(value) <= 32:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ParseError(f"{what}: {key} must be a number, got {_show(value)}")
    return number


def _point(fields: Mapping[str, Any], what: str) -> float | None:
    if fields.get("point") in (None, ""):
        return None
    return _float(fields["point"], "point", what)


def _text(value: object, key: str, what: str, limit: int = MAX_FIELD_CHARS) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ParseError(f"{what}: {key} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > limit:
        raise ParseError(f"{what}: {key} is longer than {limit} characters")
    return text


def _msgid(value: object, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**32:
        return str(value)
    if isinstance(value, str) and _MSGID.fullmatch(value.strip()) and value.strip("0 "):
        return value.strip()
    raise ParseError(f"{what}: msgid must be a positive integer, got {_show(value)}")


def _phone(value: object, key: str, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        # A number sent as a JSON number lost its leading 0: 988123456 is 0988123456.
        digits = str(value)
        value = "0" + digits if len(digits) == 9 and digits.startswith("9") else digits
    if not isinstance(value, str) or not _PHONE.fullmatch(value.rstrip()):
        raise ParseError(f"{what}: {key} must be a phone number, got {_show(value)}")
    return value.rstrip()


def parse_send_reply(body: bytes | str) -> SendReply:
    """A `sendsms.aspx` reply, text or JSON form."""
    what = "sendsms"
    text = _decode(body, what)
    if not text:
        raise ParseError(f"{what}: empty reply")
    fields = _reply_fields(text, what, exactly_one=True)
    if "statuscode" not in fields:
        raise ParseError(f"{what}: no statuscode")
    statuscode = _int(fields["statuscode"], "statuscode", what)
    statusstr = _text(fields.get("statusstr"), "statusstr", what)
    point = _point(fields, what)
    msgid = None
    if statuscode == 0:
        if "msgid" not in fields:
            raise ParseError(f"{what}: accepted without a msgid")
        msgid = _msgid(fields["msgid"], what)
    return SendReply(msgid, statuscode, statusstr, point)


def parse_query(body: bytes | str) -> list[StatusLine]:
    """A `query.asp` reply (`code|word|phone`, or the JSON form) or a `queryBulk.asp` reply
    (`code|word|phone|msgid` lines separated by CRLF). An empty reply lists nothing."""
    what = "query"
    text = _decode(body, what)
    if text.startswith("{"):
        return [
            _status_line(e.get("statuscode"), e.get("statusstr"), e.get("cellphone"), None, what)
            for e in _json_entries(_load_json(text, what), what)
        ]
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_QUERY_LINES:
        raise ParseError(f"{what}: more than {MAX_QUERY_LINES} lines")
    result = []
    for index, line in enumerate(lines, 1):
        parts = [part.strip() for part in line.split("|")]
        if len(parts) not in (3, 4):
            raise ParseError(f"{what}: line {index} has {len(parts)} fields, expected 3 or 4")
        msgid = parts[3] if len(parts) == 4 else None
        try:
            result.append(_status_line(parts[0], parts[1], parts[2], msgid, what))
        except ParseError as exc:
            raise ParseError(f"line {index}: {exc}") from None
    return result


def _status_line(code: object, word: object, phone: object, msgid: object, what: str) -> StatusLine:
    statuscode = _int(code, "statuscode", what)
    statusstr = _text(word, "statusstr", what)
    if statuscode < 0:
        # An error line (e.g. -2 authorization): phone and msgid may be empty.
        shown = phone if isinstance(phone, str) and _PHONE.fullmatch(phone) else None
        return StatusLine(statuscode, statusstr, shown, None)
    if not _WORD.fullmatch(statusstr):
        raise ParseError(f"{what}: status word must be letters, got {_show(statusstr)}")
    return StatusLine(
        statuscode,
        statusstr,
        _phone(phone, "phone", what),
        None if msgid in (None, "") else _msgid(msgid, what),
    )


def parse_balance(body: bytes | str) -> BalanceReply:
    """A `query_point.asp` reply: the JSON form, `key=value` lines, or a bare number."""
    what = "query_point"
    text = _decode(body, what)
    if not text:
        raise ParseError(f"{what}: empty reply")
    if not text.startswith("{") and "=" not in text:
        return BalanceReply(0, "", _float(text, "point", what))
    fields = _reply_fields(text, what)
    statuscode = _int(fields.get("statuscode", "0"), "statuscode", what)
    statusstr = _text(fields.get("statusstr"), "statusstr", what)
    point = _point(fields, what)
    if statuscode == 0 and point is None:
        raise ParseError(f"{what}: no point in a successful reply")
    return BalanceReply(statuscode, statusstr, point)


def parse_cancel(body: bytes | str) -> CancelReply:
    """A `sendsms_cancel.asp` reply: `statuscode=..\\nstatusstr=..` lines or JSON."""
    what = "sendsms_cancel"
    text = _decode(body, what)
    if not text:
        raise ParseError(f"{what}: empty reply")
    fields = _reply_fields(text, what)
    if "statuscode" not in fields:
        raise ParseError(f"{what}: no statuscode")
    return CancelReply(
        _int(fields["statuscode"], "statuscode", what),
        _text(fields.get("statusstr"), "statusstr", what),
    )


def _query_value(query: Mapping[str, str], key: str, what: str, *, required: bool) -> str | None:
    value = query.get(key)
    if value is None:
        if required:
            raise ParseError(f"{what}: missing {key}")
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what}: {key} must be a string")
    return value


def parse_report(query: Mapping[str, str]) -> CloudStatus:
    """A delivery report ("phase two"): the query of smsgo's GET to the `response` URL,
    `msgid`, `statuscode`, `statusstr` and (since 4.0, though "未明載") `dstaddr`."""
    what = "report"
    msgid = _msgid(_query_value(query, "msgid", what, required=True), what)
    raw_word = _query_value(query, "statusstr", what, required=True) or ""
    if not _WORD.fullmatch(raw_word.strip()):
        raise ParseError(f"{what}: statusstr must be a status word, got {_show(raw_word)}")
    raw_code = _query_value(query, "statuscode", what, required=False)
    if raw_code not in (None, ""):
        _int(raw_code, "statuscode", what)
    number = None
    raw_phone = _query_value(query, "dstaddr", what, required=False)
    if raw_phone not in (None, ""):
        number = from_smsgo_number(_phone(raw_phone, "dstaddr", what))
    state, code, meaning = status_state(raw_word)
    return CloudStatus(upstream_id=msgid, number=number, state=state, code=code, meaning=meaning)


def parse_reply(query: Mapping[str, str]) -> CloudInbound:
    """A reply SMS: the query of smsgo's GET to `replyurl` (msgid, srcaddr, dstaddr, smbody,
    encoding, timestamp). Numbers come back in E.164; the timestamp is kept as sent."""
    what = "reply"
    srcaddr = _query_value(query, "srcaddr", what, required=True) or ""
    from_number = from_smsgo_number(_phone(srcaddr, "srcaddr", what))
    smbody = _query_value(query, "smbody", what, required=True) or ""
    if len(smbody) > MAX_TEXT_CHARS:
        raise ParseError(f"{what}: smbody is longer than {MAX_TEXT_CHARS} characters")
    to_number = None
    dstaddr = _query_value(query, "dstaddr", what, required=False)
    if dstaddr not in (None, ""):
        to_number = from_smsgo_number(_phone(dstaddr, "dstaddr", what))
    msgid = _query_value(query, "msgid", what, required=False)
    if msgid not in (None, ""):
        _msgid(msgid, what)
    encoding = _query_value(query, "encoding", what, required=False)
    if encoding not in (None, "") and encoding.strip().upper() not in ENCODINGS:
        raise ParseError(f"{what}: unknown encoding {_show(encoding)}")
    timestamp = _text(_query_value(query, "timestamp", what, required=False), "timestamp", what)
    return CloudInbound(
        from_number=from_number, to_number=to_number, text=smbody, upstream_time=timestamp
    )


# --- request builders --------------------------------------------------------------------------


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """Percent-encode everything (a `+` must reach smsgo as `%2B`, not as a space) but the
    commas that separate list values, as the document writes them."""
    return "&".join(f"{quote(key, safe='')}={quote(value, safe=',')}" for key, value in params)


def build_send_params(
    username: str,
    password: str,
    numbers: Sequence[str],
    text: str,
    encoding: str,
    *,
    dlvtime: str | None = None,
    response: str | None = None,
    replyurl: str | None = None,
) -> list[tuple[str, str]]:
    """`numbers` already in smsgo's format (`to_smsgo_number`)."""
    if not 1 <= len(numbers) <= MAX_BATCH:
        raise ValueError(f"smsgo takes 1 to {MAX_BATCH} numbers per send")
    params = [
        ("username", username),
        ("password", password),
        ("dstaddr", ",".join(numbers)),
        ("encoding", encoding),
        ("smbody", text),
        ("rtype", "JSON"),
    ]
    if dlvtime is not None:
        params.append(("dlvtime", dlvtime))
    if response:
        params.append(("response", response))
    if replyurl and encoding in REPLY_ENCODINGS:
        params.append(("replyurl", replyurl))
    return params


# --- client ------------------------------------------------------------------------------------


class SmsgoProvider(HttpClient):
    """The smsgo route. Owns one ClientSession; tries the primary URL, then the backup URL
    when the primary cannot be reached or answers something that is not an smsgo reply."""

    def __init__(
        self,
        settings: SmsgoSettings,
        password: SecretStr,
        *,
        report_url: str | None = None,
        reply_url: str | None = None,
    ) -> None:
        super().__init__(settings.timeout)
        self.name = "smsgo"
        self.max_batch = MAX_BATCH
        self.balance_clears = BALANCE_CLEARS
        self.settings = settings
        self._password = password
        self._report_url = report_url or None
        self._reply_url = reply_url or None
        if self._reply_url is not None and len(self._reply_url) > MAX_REPLYURL_CHARS:
            # smsgo refuses longer ones; the URL itself holds the hook token, so only its
            # length is logged. Sending still works, replies just are not pushed.
            log.warning(
                "replyurl_dropped",
                provider=self.name,
                length=len(self._reply_url),
                limit=MAX_REPLYURL_CHARS,
            )
            self._reply_url = None
        endpoints = [("primary", settings.url.rstrip("/"))]
        if settings.backup_url and settings.backup_url.rstrip("/") != endpoints[0][1]:
            endpoints.append(("backup", settings.backup_url.rstrip("/")))
        self._endpoints = tuple(endpoints)

    def _auth(self) -> list[tuple[str, str]]:
        return [
            ("username", self.settings.username),
            ("password", self._password.get_secret_value()),
        ]

    def _scrub(self, text: str) -> str:
        # Parser messages quote at most 16 characters of a reply; a page that echoes the
        # request could still show the password, so it is cut out as a second guard.
        secret = self._password.get_secret_value()
        return text.replace(secret, "[redacted]") if len(secret) >= 4 else text

    # --- transport ---------------------------------------------------------------------------

    async def _fetch(self, base: str, path: str, query: str) -> bytes:
        url = URL(f"{base}/{path}?{query}", encoded=True)
        with transport_errors(path, self.settings.timeout):
            async with self._get_session().get(url) as resp:
                if resp.status >= 300:
                    raise UpstreamError(ErrorReason.HTTP_STATUS, f"{path}: HTTP {resp.status}")
                return await read_limited(resp, MAX_REPLY_BYTES, path)

    async def _call(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        parse: Callable[[bytes], _T],
        failed: list[UpstreamError] | None = None,
    ) -> _T:
        """One operation, primary first. A reply that parses (even an smsgo error code) ends
        it; a transport failure or a reply that is no smsgo reply moves on to the backup (as
        smsgo's document advises). Each endpoint's failure is appended to `failed`."""
        query = encode_query(params)
        failures: list[tuple[str, UpstreamError]] = []
        for endpoint, base in self._endpoints:
            try:
                body = await self._fetch(base, path, query)
                try:
                    return parse(body)
                except ParseError as exc:
                    raise UpstreamError(ErrorReason.PARSE, self._scrub(str(exc))) from None
            except UpstreamError as exc:
                failures.append((endpoint, exc))
                if failed is not None:
                    failed.append(exc)
                log.warning(
                    "endpoint_failed",
                    provider=self.name,
                    operation=path,
                    endpoint=endpoint,
                    reason=exc.reason.value,
                    detail=exc.detail,
                )
        reason = failures[-1][1].reason
        detail = "; ".join(f"{endpoint}: {exc.detail}" for endpoint, exc in failures)
        raise UpstreamError(reason, detail)

    def _refusal(self, path: str, statuscode: int, statusstr: str) -> UpstreamError:
        """An smsgo error code answering a query, balance or cancel call."""
        if statuscode in SEND_CODES:
            meaning = SEND_CODES[statuscode][1]
        else:
            meaning = self._scrub(statusstr[:MAX_FIELD_CHARS]) or "no status text"
        reason = ErrorReason.AUTH if statuscode == -2 else ErrorReason.HTTP_STATUS
        return UpstreamError(reason, f"{path}: smsgo statuscode {statuscode} ({meaning})")

    # --- sending -----------------------------------------------------------------------------

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        plan = plan_text(text)
        results: dict[str, CloudSendResult] = {}
        targets: list[tuple[str, str]] = []
        for number in dict.fromkeys(numbers):
            refusal = self._local_refusal(number, text, plan)
            if isinstance(refusal, CloudSendResult):
                results[number] = refusal
            else:
                targets.append((number, refusal))
        dlvtime = None
        if send_at is not None and send_at > time.time():
            dlvtime = format_dlvtime(send_at)
        for start in range(0, len(targets), MAX_BATCH):
            chunk = targets[start : start + MAX_BATCH]
            for result in await self._send_chunk(chunk, text, plan, dlvtime):
                results[result.number] = result
        return [results[number] for number in numbers]

    def _local_refusal(self, number: str, text: str, plan: TextPlan) -> CloudSendResult | str:
        """What smsgo would refuse or silently mangle, refused here: the number in smsgo's
        format when it may go, else a FAILED result."""
        if not text:
            return CloudSendResult(number, Verdict.FAILED, code="empty_text", meaning="empty text")
        if not _utf8_ok(text):
            return CloudSendResult(
                number,
                Verdict.FAILED,
                code="invalid_text",
                meaning="text holds a lone UTF-16 surrogate, which no SMS can carry",
            )
        if plan.too_long:
            return CloudSendResult(
                number,
                Verdict.FAILED,
                code="text_too_long",
                meaning=(
                    f"text is {plan.units} characters; one smsgo long SMS takes at most "
                    f"{LONG_LIMIT} and smsgo would cut the rest off"
                ),
            )
        try:
            local = to_smsgo_number(number)
        except ValueError as exc:
            return CloudSendResult(number, Verdict.FAILED, code="invalid_number", meaning=str(exc))
        if plan.long and not is_domestic(local):
            return CloudSendResult(
                number,
                Verdict.FAILED,
                code="long_sms_international",
                meaning=(
                    f"text needs a long SMS ({plan.units} characters) and smsgo sends long SMS "
                    "to Taiwan numbers only"
                ),
            )
        return local

    async def _send_chunk(
        self, chunk: Sequence[tuple[str, str]], text: str, plan: TextPlan, dlvtime: str | None
    ) -> list[CloudSendResult]:
        failed: list[UpstreamError] = []
        results = await self._send_call(chunk, text, plan, dlvtime, failed)
        # A primary that timed out or cut its reply short may have sent the batch before the
        # backup was asked: each number may go out once more, and that must be counted.
        lost = sum(1 for exc in failed if exc.reason in AMBIGUOUS_REASONS)
        if not lost:
            return results
        return [replace(r, lost_answers=r.lost_answers + lost) for r in results]

    async def _send_call(
        self,
        chunk: Sequence[tuple[str, str]],
        text: str,
        plan: TextPlan,
        dlvtime: str | None,
        failed: list[UpstreamError],
    ) -> list[CloudSendResult]:
        params = build_send_params(
            self.settings.username,
            self._password.get_secret_value(),
            [local for _, local in chunk],
            text,
            plan.encoding,
            dlvtime=dlvtime,
            response=self._report_url,
            replyurl=self._reply_url,
        )
        try:
            reply = await self._call(SEND_PATH, params, parse_send_reply, failed)
        except UpstreamError as exc:
            return [
                CloudSendResult(
                    number,
                    Verdict.RETRY,
                    code=exc.reason.value,
                    meaning=f"no usable answer from smsgo: {exc.detail}",
                )
                for number, _ in chunk
            ]
        verdict, meaning = send_verdict(reply.statuscode)
        if verdict is Verdict.ACCEPTED:
            return [
                CloudSendResult(number, verdict, upstream_id=reply.msgid, code="0", meaning="OK")
                for number, _ in chunk
            ]
        if reply.statuscode in ISOLATE_CODES and len(chunk) > 1:
            # The code blames one number without naming it and nothing was sent: one call per
            # number finds it and lets the others go.
            log.info("batch_isolated", provider=self.name, code=reply.statuscode, size=len(chunk))
            isolated: list[CloudSendResult] = []
            for item in chunk:
                isolated.extend(await self._send_chunk([item], text, plan, dlvtime))
            return isolated
        if reply.statuscode not in SEND_CODES and reply.statusstr:
            meaning = f"{meaning}: {self._scrub(reply.statusstr)}"
        log.warning(
            "send_refused",
            provider=self.name,
            code=reply.statuscode,
            verdict=verdict.value,
            numbers=len(chunk),
        )
        return [
            CloudSendResult(number, verdict, code=str(reply.statuscode), meaning=meaning)
            for number, _ in chunk
        ]

    # --- status, balance, cancel -------------------------------------------------------------

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        """`query.asp` for one (msgid, number), `queryBulk.asp` (50 pairs a call) for more."""
        pairs: dict[tuple[str, str], str] = {}
        for upstream_id, number in items:
            try:
                local = to_smsgo_number(number)
            except ValueError:
                continue
            if _MSGID.fullmatch(upstream_id):
                pairs[(upstream_id, local)] = number
        if not pairs:
            return []
        keys = list(pairs)
        if len(keys) == 1:
            msgid, local = keys[0]
            params = [*self._auth(), ("msgid", msgid), ("dstaddr", local), ("rtype", "JSON")]
            lines = await self._call(QUERY_PATH, params, parse_query)
            return self._statuses(QUERY_PATH, lines, pairs, default_msgid=msgid)
        statuses: list[CloudStatus] = []
        for start in range(0, len(keys), MAX_BATCH):
            chunk = keys[start : start + MAX_BATCH]
            params = [
                *self._auth(),
                ("msgid", ",".join(msgid for msgid, _ in chunk)),
                ("dstaddr", ",".join(local for _, local in chunk)),
            ]
            lines = await self._call(QUERY_BULK_PATH, params, parse_query)
            statuses.extend(self._statuses(QUERY_BULK_PATH, lines, pairs, default_msgid=None))
        return statuses

    def _statuses(
        self,
        path: str,
        lines: Sequence[StatusLine],
        pairs: Mapping[tuple[str, str], str],
        default_msgid: str | None,
    ) -> list[CloudStatus]:
        asked = {msgid for msgid, _ in pairs}
        statuses = []
        refused: set[int] = set()
        for line in lines:
            if line.statuscode == -2:
                raise self._refusal(path, line.statuscode, line.statusstr)
            if line.statuscode < 0:
                refused.add(line.statuscode)
                continue
            msgid = line.msgid or default_msgid
            if line.phone is None or msgid not in asked:
                # A msgid never asked for: what a bulk reply cut inside its last line shows.
                continue
            number = pairs.get((msgid, line.phone)) or from_smsgo_number(line.phone)
            state, code, meaning = status_state(line.statusstr)
            statuses.append(
                CloudStatus(msgid, number, state, code or str(line.statuscode), meaning)
            )
        if refused:
            # Nothing to apply, but a query that keeps failing should not go unnoticed.
            log.info("status_refused", provider=self.name, operation=path, codes=sorted(refused))
        return statuses

    async def balance(self) -> float | None:
        reply = await self._call(POINT_PATH, [*self._auth(), ("rtype", "JSON")], parse_balance)
        if reply.statuscode != 0 or reply.point is None:
            raise self._refusal(POINT_PATH, reply.statuscode, reply.statusstr)
        return reply.point

    async def cancel(self, upstream_id: str) -> bool:
        """Cancel a scheduled send (the whole msgid: every number of its call)."""
        if not _MSGID.fullmatch(upstream_id):
            return False
        params = [*self._auth(), ("msgid", upstream_id), ("rtype", "JSON")]
        reply = await self._call(CANCEL_PATH, params, parse_cancel)
        if reply.statuscode == -2:
            raise self._refusal(CANCEL_PATH, reply.statuscode, reply.statusstr)
        if reply.statuscode != 0:
            log.info("cancel_refused", provider=self.name, code=reply.statuscode)
        return reply.statuscode == 0
