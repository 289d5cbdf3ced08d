"""A simulated smsgo (簡訊購) API 6.2, on loopback only.

It answers `sendsms.aspx`, `query.asp`, `queryBulk.asp`, `query_point.asp` and
`sendsms_cancel.asp` under `/sms_gw/` the way smsgo's API document v6.2 shows (text replies by
default, JSON with `rtype=JSON`, Big5-era quirks such as `text/html` labels and trailing commas
in JSON), checks credentials and parameters the way the document describes, and pushes what the
real service pushes: delivery reports as GETs to the `response` URL (retried 3 times until the
exact acknowledgement comes back) and reply SMS as GETs to the `replyurl`.

The same state is served on two ports, the primary and the backup URL, so one of them can fail
(refuse connections, time out, answer 500 or an HTML page, cut the reply, reset the connection)
while the other works. Tests drive it in-process through `SmsgoSim`, or over HTTP through the
JSON control API under `/_control/`, which every port serves and the control port always does.

What the document does not show is invented here, and the client module relies on none of it
beyond what its docstring names: balance and cancel text replies are `key=value` lines, a
message not final yet reads SCHEDULED or ENROUTE in status queries, an unknown msgid gives an
empty result, replies carry `timestamp` as `YYYY/MM/DD hh:mm:ss` Taiwan time, and `rtype=XML`
(never shown) falls back to the text form.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from goipd.sim import common
from goipd.sim.common import SimError
from goipd.sim.goip import is_loopback

log = structlog.get_logger("goipd.sim.smsgo")

SIDES: Final = ("primary", "backup")
FAULT_MODES: Final = (
    "none",
    "auth",
    "no_credit",
    "code",
    "slow",
    "timeout",
    "http_500",
    "html",
    "truncated",
    "reset",
    "down",
)
"""auth: every call answers -2. no_credit: sends answer -8 and the balance reads 0. code: sends
answer `Fault.code`. slow/timeout: answer after `Fault.delay` seconds. http_500, html: an error
page. truncated: the call is carried out, only the first half of its reply is sent. reset: TCP
RST instead of an answer. down: the port refuses connections."""
OPERATIONS: Final = frozenset(
    {"sendsms.aspx", "query.asp", "queryBulk.asp", "query_point.asp", "sendsms_cancel.asp"}
)
ENCODINGS: Final = frozenset(
    {"BIG5", "ASCII", "UCS2", "PBIG5", "PASCII", "LBIG5", "LASCII", "LUCS2", "PUSH"}
)
ABROAD_ENCODINGS: Final = frozenset({"BIG5", "ASCII", "UCS2"})
FINAL_WORDS: Final = (
    "DELIVRD",
    "EXPIRED",
    "DELETED",
    "UNDELIV",
    "ABSENT",
    "SPAM",
    "BLOCK",
    "ACCEPTD",
    "UNKNOWN",
    "REJECTD",
    "SYNTAXE",
)
STATUS_TEXT: Final = {
    0: "OK",
    -1: "CGI string error!!",
    -2: "授權錯誤(帳號/密碼錯誤/IP錯誤)",
    -3: "Priority錯誤(User設定太高的優先權)",
    -4: "A Number違反規則",
    -5: "B Number違反規則",
    -6: "Closed User",
    -7: "Invalid Encoding",
    -8: "點數不夠",
    -9: "Invalid msisdn amount",
    -10: "Send Fail",
}
MAX_NUMBERS: Final = 50
SINGLE_CHARS: Final = {"ASCII": 160, "PASCII": 160, "BIG5": 70, "UCS2": 70, "PBIG5": 70}
LONG_CHARS: Final = 330
MAX_REPLYURL: Final = 300
ACK: Final = "magicid=tccrd_sms_gateway_rpack\nmsgid={msgid}\n"
TAIWAN: Final = timezone(timedelta(hours=8), "Asia/Taipei")
TIME_FORMAT: Final = "%Y/%m/%d %H:%M:%S"
FIRST_MSGID: Final = 1504280910500000
HTML_PAGE: Final = (
    "<html><head><title>Service Unavailable</title></head>"
    "<body><h2>系統維護中</h2><p>The service is under maintenance.</p></body></html>"
)
LOG_LIMIT: Final = 10_000
_DOMESTIC = re.compile(r"09[0-9]{8}")
_ABROAD = re.compile(r"\+[1-9][0-9]{7,14}")


@dataclass
class Fault(common.Fault):
    code: int = -10

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay": self.delay, "code": self.code}


@dataclass(eq=False)
class SimMessage:
    msgid: str
    numbers: list[str]
    text: str
    """As it reaches the phones: cut to the encoding's limit, as smsgo does."""
    encoding: str
    dlvtime: float | None
    response: str | None
    replyurl: str | None
    replydays: int
    created: float
    side: str
    states: dict[str, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def state(self) -> dict[str, Any]:
        return {
            "msgid": self.msgid,
            "numbers": list(self.numbers),
            "text": self.text,
            "encoding": self.encoding,
            "dlvtime": self.dlvtime,
            "response": self.response is not None,
            "replyurl": self.replyurl is not None,
            "replydays": self.replydays,
            "side": self.side,
            "states": dict(self.states),
        }


class _Listener:
    """One listening port that can stop accepting connections and start again."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.site: web.TCPSite | None = None

    async def start(self) -> None:
        if self.site is None:
            site = web.TCPSite(self.runner, self.host, self.port)
            await site.start()
            self.site = site
            if self.port == 0 and self.runner.addresses:
                self.port = int(self.runner.addresses[-1][1])

    async def stop(self) -> None:
        if self.site is not None:
            await self.site.stop()
            self.site = None


class SmsgoSim:
    """The service's state, shared by the primary and backup ports."""

    def __init__(
        self,
        *,
        username: str = "goipd",
        password: str = "smsgo-secret",  # noqa: S107 - a simulator's test account
        api_key: str | None = None,
        points: int = 10_000,
        dlr_delay: float = 0.05,
        dlr_retry_delay: float = 0.1,
        dlr_attempts: int = 4,
        dlr_default: str = "DELIVRD",
        reply_number: str = "0911000111",
        quirks: bool = True,
        push_timeout: float = 5.0,
        invalid_numbers: Iterable[str] = (),
    ) -> None:
        self.username = username
        self.password = password
        self.api_key = api_key
        self.points = points
        self.dlr_delay = common.seconds(dlr_delay, "dlr_delay")
        self.dlr_retry_delay = common.seconds(dlr_retry_delay, "dlr_retry_delay")
        self.dlr_attempts = max(1, int(dlr_attempts))
        """1 + the document's 3 re-tries."""
        self.dlr_default = _word(dlr_default)
        self.dlr_status: dict[str, str] = {}
        """Final status word per number (smsgo format), else `dlr_default`."""
        self.reply_number = reply_number
        self.quirks = quirks
        self.push_timeout = push_timeout
        self.invalid_numbers: set[str] = set(invalid_numbers)
        """Numbers of valid shape the service still calls "B Number違反規則" (-5)."""
        self.faults: dict[str, Fault] = {side: Fault() for side in SIDES}
        self.messages: dict[str, SimMessage] = {}
        self.sends: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        """Every send call that passed authentication, accepted or not."""
        self.requests: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        """Every API request (password left out): side, operation, decoded and raw params."""
        self.dlr_log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        """Every delivery-report push attempt and its outcome."""
        self.reply_log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.counters: Counter[str] = Counter()
        self._next_msgid = FIRST_MSGID
        self._listeners: dict[str, _Listener] = {}
        self._background = common.Background()

    # --- control (mirrors the control API) ---------------------------------------------------

    async def set_fault(
        self,
        mode: str,
        side: str = "both",
        *,
        delay: float | None = None,
        code: int | None = None,
    ) -> dict[str, Any]:
        common.fault_mode(mode, FAULT_MODES)
        if side not in (*SIDES, "both"):
            raise SimError("side must be primary, backup or both")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise SimError("code must be an integer statuscode")
        for name in SIDES if side == "both" else (side,):
            old = self.faults[name]
            self.faults[name] = Fault(
                mode,
                old.delay if delay is None else common.seconds(delay, "delay"),
                old.code if code is None else code,
            )
            listener = self._listeners.get(name)
            if listener is not None:
                if mode == "down":
                    await listener.stop()
                else:
                    await listener.start()
        log.info("sim_fault_set", sim="smsgo", side=side, mode=mode)
        return self.fault_state()

    def fault_state(self) -> dict[str, Any]:
        return {side: fault.as_dict() for side, fault in self.faults.items()}

    def set_dlr(
        self,
        *,
        delay: float | None = None,
        retry_delay: float | None = None,
        default: str | None = None,
        status: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if delay is not None:
            self.dlr_delay = common.seconds(delay, "delay")
        if retry_delay is not None:
            self.dlr_retry_delay = common.seconds(retry_delay, "retry_delay")
        if default is not None:
            self.dlr_default = _word(default)
        if status is not None:
            if not isinstance(status, Mapping):
                raise SimError("status must map numbers to status words")
            for number, word in status.items():
                self.dlr_status[_sim_number(str(number))] = _word(word)
        return self.dlr_state()

    def dlr_state(self) -> dict[str, Any]:
        return {
            "delay": self.dlr_delay,
            "retry_delay": self.dlr_retry_delay,
            "attempts": self.dlr_attempts,
            "default": self.dlr_default,
            "status": dict(self.dlr_status),
        }

    def set_account(
        self, *, points: int | None = None, invalid_numbers: Iterable[str] | None = None
    ) -> dict[str, Any]:
        if points is not None:
            if isinstance(points, bool) or not isinstance(points, int):
                raise SimError("points must be an integer")
            self.points = points
        if invalid_numbers is not None:
            if isinstance(invalid_numbers, str):
                raise SimError("invalid_numbers must be a list of numbers")
            self.invalid_numbers = {_sim_number(str(n)) for n in invalid_numbers}
        return {"points": self.points, "invalid_numbers": sorted(self.invalid_numbers)}

    def message(self, msgid: str) -> SimMessage:
        try:
            return self.messages[msgid]
        except KeyError:
            raise LookupError(f"no message {msgid}") from None

    def state(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "points": self.points,
            "faults": self.fault_state(),
            "dlr": self.dlr_state(),
            "messages": len(self.messages),
            "sends": len(self.sends),
            "requests": len(self.requests),
            "counters": dict(self.counters),
        }

    async def inject_reply(
        self,
        msgid: str,
        smbody: str,
        *,
        srcaddr: str | None = None,
        encoding: str | None = None,
        timestamp: str | None = None,
    ) -> dict[str, Any]:
        """A recipient of `msgid` answers: push it to that send's `replyurl` now."""
        message = self.message(msgid)
        if message.replyurl is None:
            raise SimError(f"message {msgid} was sent without a replyurl (or with a long SMS)")
        if time.time() > message.created + message.replydays * 86400:
            raise SimError(f"message {msgid} no longer takes replies (replydays)")
        sender = message.numbers[0] if srcaddr is None else _sim_number(srcaddr)
        if sender not in message.numbers:
            raise SimError(f"{sender} is not a recipient of message {msgid}")
        if not isinstance(smbody, str):
            raise SimError("smbody must be a string")
        params = [
            ("msgid", msgid),
            ("srcaddr", sender),
            ("dstaddr", self.reply_number),
            ("smbody", smbody),
            ("encoding", encoding or ("ASCII" if smbody.isascii() else "UCS2")),
            ("timestamp", timestamp or datetime.now(TAIWAN).strftime(TIME_FORMAT)),
        ]
        outcome, status = await self._push_once(message.replyurl, params, expect=None)
        entry = {
            "msgid": msgid,
            "srcaddr": sender,
            "smbody": smbody,
            "outcome": outcome,
            "http_status": status,
            "at": time.time(),
        }
        self.reply_log.append(entry)
        self.counters[f"reply_{'ok' if outcome == 'ok' else 'failed'}"] += 1
        return entry

    # --- the vendor API, minus HTTP ----------------------------------------------------------

    def authorized(self, params: Mapping[str, str]) -> bool:
        secrets = {self.password} | ({self.api_key} if self.api_key else set())
        return params.get("username") == self.username and params.get("password") in secrets

    def send(self, params: Mapping[str, str], side: str, fault: Fault) -> dict[str, Any]:
        """`sendsms.aspx`: the reply fields (msgid, statuscode, statusstr, point)."""
        if fault.mode == "auth" or not self.authorized(params):
            return self._send_refused(-2)
        if fault.mode == "code":
            return self._record_send(params, side, self._send_refused(fault.code))
        reply = self._check_send(params, no_credit=fault.mode == "no_credit")
        if reply["statuscode"] == 0:
            reply = self._accept(params, side, reply["point"])
        return self._record_send(params, side, reply)

    def _check_send(self, params: Mapping[str, str], *, no_credit: bool) -> dict[str, Any]:
        text = params.get("smbody", "")
        if not text:
            return self._send_refused(-1)  # FAQ 7: an empty body
        encoding = params.get("encoding") or "BIG5"
        if encoding not in ENCODINGS:
            return self._send_refused(-7)
        numbers = [n.strip() for n in params.get("dstaddr", "").split(",") if n.strip()]
        if not 1 <= len(numbers) <= MAX_NUMBERS:
            return self._send_refused(-9)
        for number in numbers:
            if not (_DOMESTIC.fullmatch(number) or _ABROAD.fullmatch(number)):
                return self._send_refused(-5)
            if number in self.invalid_numbers:
                return self._send_refused(-5)
            if not _DOMESTIC.fullmatch(number) and encoding not in ABROAD_ENCODINGS:
                return self._send_refused(-7)  # abroad: BIG5/ASCII/UCS2 only
        if "dlvtime" in params and _parse_dlvtime(params["dlvtime"]) is None:
            return self._send_refused(-1)
        if len(params.get("replyurl", "")) > MAX_REPLYURL:
            return self._send_refused(-1)
        replydays = params.get("replydays", "3")
        if not (replydays.isascii() and replydays.isdigit() and 1 <= int(replydays) <= 30):
            return self._send_refused(-1)
        cost = len(numbers) * _parts(text, encoding)
        if _reply_active(params, encoding):
            cost += math.ceil(len(numbers) / 10)  # "每 10 則簡訊多扣一點"
        if no_credit or cost > self.points:
            return self._send_refused(-8)
        return {"msgid": 0, "statuscode": 0, "statusstr": "OK", "point": cost}

    def _accept(self, params: Mapping[str, str], side: str, cost: int) -> dict[str, Any]:
        self._next_msgid += 1
        msgid = str(self._next_msgid)
        encoding = params.get("encoding") or "BIG5"
        text = params["smbody"]
        limit = LONG_CHARS if encoding.startswith("L") else SINGLE_CHARS.get(encoding, LONG_CHARS)
        numbers = list(dict.fromkeys(n.strip() for n in params["dstaddr"].split(",") if n.strip()))
        dlvtime = _parse_dlvtime(params["dlvtime"]) if "dlvtime" in params else None
        scheduled = dlvtime is not None and dlvtime > time.time()
        message = SimMessage(
            msgid=msgid,
            numbers=numbers,
            text=text[:limit],  # the document: longer texts are cut, silently
            encoding=encoding,
            dlvtime=dlvtime,
            response=params.get("response") or None,
            replyurl=params.get("replyurl") if _reply_active(params, encoding) else None,
            replydays=int(params.get("replydays", "3")),
            created=time.time(),
            side=side,
            states=dict.fromkeys(numbers, "SCHEDULED" if scheduled else "ENROUTE"),
        )
        self.messages[msgid] = message
        self.points -= cost
        self.counters["messages_accepted"] += 1
        self.counters["recipients_accepted"] += len(numbers)
        message.task = self._background.spawn(self._deliver(message))
        return {"msgid": int(msgid), "statuscode": 0, "statusstr": "OK", "point": cost}

    def _send_refused(self, code: int) -> dict[str, Any]:
        self.counters[f"send_refused_{code}"] += 1
        return {"msgid": code, "statuscode": code, "statusstr": _status_text(code), "point": 0}

    def _record_send(
        self, params: Mapping[str, str], side: str, reply: dict[str, Any]
    ) -> dict[str, Any]:
        text = params.get("smbody", "")
        message = self.messages.get(str(reply["msgid"]))
        self.sends.append(
            {
                "side": side,
                "msgid": str(reply["msgid"]) if reply["statuscode"] == 0 else None,
                "statuscode": reply["statuscode"],
                "dstaddr": [n for n in params.get("dstaddr", "").split(",") if n],
                "encoding": params.get("encoding"),
                "smbody": text,
                "delivered_text": message.text if message is not None else None,
                "truncated": message is not None and message.text != text,
                "dlvtime": params.get("dlvtime"),
                "response": params.get("response"),
                "replyurl": params.get("replyurl"),
                "rtype": params.get("rtype"),
                "point": reply["point"],
                "at": time.time(),
            }
        )
        return reply

    def query(self, params: Mapping[str, str], fault: Fault, *, bulk: bool) -> list[list[str]]:
        """`query.asp` / `queryBulk.asp`: rows of (statuscode, statusstr, phone[, msgid])."""
        if fault.mode == "auth" or not self.authorized(params):
            return [["-2", _status_text(-2), "", ""]]
        msgids = [m.strip() for m in params.get("msgid", "").split(",") if m.strip()]
        numbers = [n.strip() for n in params.get("dstaddr", "").split(",") if n.strip()]
        if not msgids or (not bulk and len(msgids) > 1):
            return [["-1", _status_text(-1), "", ""]]
        wanted: list[tuple[str, str | None]]
        if not numbers:
            wanted = [(m, None) for m in msgids]
        elif len(msgids) == len(numbers):
            wanted = list(zip(msgids, numbers, strict=True))
        elif len(msgids) == 1:
            wanted = [(msgids[0], n) for n in numbers]
        else:
            return [["-1", _status_text(-1), "", ""]]
        rows = []
        for msgid, number in wanted:
            message = self.messages.get(msgid)
            if message is None:
                continue
            for phone, word in message.states.items():
                if number is None or number == phone:
                    rows.append(["0", word, phone, msgid])
        return rows

    def point(self, params: Mapping[str, str], fault: Fault) -> dict[str, Any]:
        if fault.mode == "auth" or not self.authorized(params):
            return {"statuscode": -2, "statusstr": _status_text(-2), "point": 0}
        points = 0 if fault.mode == "no_credit" else self.points
        return {"statuscode": 0, "statusstr": "OK", "point": points}

    def cancel(self, params: Mapping[str, str], fault: Fault) -> dict[str, Any]:
        msgid = params.get("msgid", "")
        if fault.mode == "auth" or not self.authorized(params):
            return {"msgid": msgid, "statuscode": -2, "statusstr": _status_text(-2)}
        message = self.messages.get(msgid)
        if message is None or "SCHEDULED" not in message.states.values():
            return {"msgid": msgid, "statuscode": -1, "statusstr": "not a scheduled message"}
        if message.task is not None:
            message.task.cancel()
        refund = 0
        for number, word in message.states.items():
            if word == "SCHEDULED":
                message.states[number] = "DELETED"
                refund += _parts(message.text, message.encoding)
        self.points += refund
        self.counters["messages_cancelled"] += 1
        return {"msgid": msgid, "statuscode": 0, "statusstr": "OK"}

    # --- rendering, quirks included ----------------------------------------------------------

    def render(self, operation: str, reply: Any, rtype: str) -> tuple[str, str]:
        """Reply body and content type of an operation, in the form `rtype` asks for."""
        json_wanted = rtype.upper() == "JSON"
        content_type = "text/html" if self.quirks else "text/plain"
        if operation == "query.asp" or operation == "queryBulk.asp":
            if json_wanted and operation == "query.asp":
                entries = [
                    {"statusCode": row[0], "statusStr": row[1], "cellphone": row[2]}
                    for row in reply
                ]
                return self._results_json(entries), self._json_type()
            width = 4 if operation == "queryBulk.asp" else 3
            return "\r\n".join("|".join(row[:width]) for row in reply), content_type
        if operation == "query_point.asp":
            if json_wanted:
                entry = {"statuscode": str(reply["statuscode"]), "point": str(reply["point"])}
                return self._results_json([entry]), self._json_type()
        elif json_wanted:
            keys = ("msgid", "statuscode", "statusstr", "point")
            fields = {key: reply[key] for key in keys if key in reply}
            fields["statuscode"] = str(reply["statuscode"])  # a string, as in the document
            body = json.dumps({"result": fields}, ensure_ascii=False, separators=(",", ":"))
            return body, self._json_type()
        text = "".join(f"{key}={value}\n" for key, value in reply.items())
        return text, content_type

    def _results_json(self, entries: list[dict[str, str]]) -> str:
        items = ",".join(json.dumps(e, ensure_ascii=False) for e in entries)
        if self.quirks and entries:
            items += ","  # as the document's query example writes it: `...},]}}`
        return '{"results":{"result":[' + items + "]}}"

    def _json_type(self) -> str:
        return "text/html" if self.quirks else "application/json"

    # --- pushes ------------------------------------------------------------------------------

    async def _deliver(self, message: SimMessage) -> None:
        if message.dlvtime is not None:
            await asyncio.sleep(max(0.0, message.dlvtime - time.time()))
            for number in message.numbers:
                message.states[number] = "ENROUTE"
        await asyncio.sleep(self.dlr_delay)
        for number in message.numbers:
            message.states[number] = self.dlr_status.get(number, self.dlr_default)
        if message.response is not None:
            await asyncio.gather(
                *(self._push_report(message, number) for number in message.numbers)
            )

    async def _push_report(self, message: SimMessage, number: str) -> None:
        word = message.states[number]
        # The document's example order: msgid, statusstr, statuscode, dstaddr.
        params = [("msgid", message.msgid), ("statusstr", word), ("statuscode", "0")]
        params.append(("dstaddr", number))
        expected = ACK.format(msgid=message.msgid)
        assert message.response is not None
        for attempt in range(1, self.dlr_attempts + 1):
            outcome, status = await self._push_once(message.response, params, expect=expected)
            self.dlr_log.append(
                {
                    "msgid": message.msgid,
                    "dstaddr": number,
                    "statusstr": word,
                    "attempt": attempt,
                    "outcome": outcome,
                    "http_status": status,
                    "at": time.time(),
                }
            )
            if outcome == "ok":
                self.counters["dlr_ok"] += 1
                return
            if attempt < self.dlr_attempts:
                await asyncio.sleep(self.dlr_retry_delay)
        self.counters["dlr_dropped"] += 1
        log.warning(
            "report_push_dropped",
            sim="smsgo",
            url=common.url_for_log(message.response),
            msgid=message.msgid,
            outcome=outcome,
            attempts=self.dlr_attempts,
        )

    async def _push_once(
        self, base: str, params: list[tuple[str, str]], expect: str | None
    ) -> tuple[str, int | None]:
        """One GET; "ok" when it got a 200 (and, for reports, exactly `expect` as text/plain)."""
        session = self._background.session(self.push_timeout)
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        url = URL(f"{base}{'&' if urlsplit(base).query else '?'}{query}", encoded=True)
        try:
            async with session.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return f"http_{resp.status}", resp.status
                if expect is None:
                    return "ok", resp.status
                if resp.content_type != "text/plain":
                    return "wrong_content_type", resp.status
                if body != expect.encode():
                    return "wrong_body", resp.status
                return "ok", resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"error:{type(exc).__name__}", None

    async def close(self) -> None:
        await self._background.close()


def _status_text(code: int) -> str:
    return STATUS_TEXT.get(code, "Unknow")


def _parts(text: str, encoding: str) -> int:
    """SMS a send costs per number: one, or the parts of a long SMS."""
    if not encoding.startswith("L"):
        return 1
    per_part = 153 if encoding == "LASCII" else 67
    return max(1, math.ceil(min(len(text), LONG_CHARS) / per_part))


def _reply_active(params: Mapping[str, str], encoding: str) -> bool:
    # "當 encoding 設為 BIG5/ASCII/UCS2 才可以使用這個 tag": ignored with other encodings.
    return bool(params.get("replyurl")) and encoding in ABROAD_ENCODINGS


def _parse_dlvtime(value: str) -> float | None:
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=TAIWAN).timestamp()
    except ValueError:
        return None


def _sim_number(number: str) -> str:
    """Control API convenience: a Taiwan mobile in E.164 becomes smsgo's `09..` form."""
    number = number.strip()
    if re.fullmatch(r"\+8869[0-9]{8}", number):
        return "0" + number[4:]
    return number


def _word(value: Any) -> str:
    if value not in FINAL_WORDS:
        raise SimError(f"status word must be one of {list(FINAL_WORDS)}")
    return str(value)


# --- HTTP: the vendor API ----------------------------------------------------------------------

SIM_KEY: Final = web.AppKey("goipd_smsgo_sim", SmsgoSim)
SIDE_KEY: Final = web.AppKey("goipd_smsgo_side", str)


def _raw_params(query_string: str) -> dict[str, str]:
    """The query as it arrived, still percent-encoded, password left out: tests check that
    a `+` came as `%2B`."""
    raw = {}
    for pair in query_string.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) != "password":
            raw[unquote(key)] = value
    return raw


async def smsgo_api(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    side = request.app[SIDE_KEY]
    operation = request.match_info["operation"]
    if operation not in OPERATIONS:
        raise web.HTTPNotFound()
    fault = sim.faults[side]
    params = {key: request.query.getone(key) for key in request.query}
    sim.requests.append(
        {
            "side": side,
            "operation": operation,
            "params": {k: v for k, v in params.items() if k != "password"},
            "raw": _raw_params(request.query_string),
            "authorized": sim.authorized(params),
            "fault": fault.mode,
            "at": time.time(),
        }
    )
    sim.counters[f"requests_{side}"] += 1
    # "down" also stops the listener; this covers connections kept alive from before.
    early = await common.fault_response(
        request, fault, html_page=HTML_PAGE, error_500="500 - Internal server error."
    )
    if early is not None:
        return early
    reply: Any
    if operation == "sendsms.aspx":
        reply = sim.send(params, side, fault)
    elif operation in ("query.asp", "queryBulk.asp"):
        reply = sim.query(params, fault, bulk=operation == "queryBulk.asp")
    elif operation == "query_point.asp":
        reply = sim.point(params, fault)
    else:
        reply = sim.cancel(params, fault)
    body, content_type = sim.render(operation, reply, params.get("rtype", ""))
    if fault.mode == "truncated":
        # Carried out in full (a send really was accepted); only the answer is cut.
        body = body[: len(body) // 2]
    return web.Response(text=body, content_type=content_type, charset="utf-8")


# --- HTTP: the control API ---------------------------------------------------------------------


async def control_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].state())


async def control_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].requests))


async def control_sends(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].sends))


async def control_message(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].message(request.match_info["msgid"]).state())


async def control_dlr_log(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].dlr_log))


async def control_replies(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].reply_log))


async def control_fault(request: web.Request) -> web.Response:
    body = await common.json_body(request, ("mode", "side", "delay", "code"))
    sim = request.app[SIM_KEY]
    state = await sim.set_fault(
        str(body.get("mode", "none")),
        str(body.get("side", "both")),
        delay=body.get("delay"),
        code=body.get("code"),
    )
    return web.json_response(state)


async def control_account(request: web.Request) -> web.Response:
    body = await common.json_body(request, ("points", "invalid_numbers"))
    state = request.app[SIM_KEY].set_account(
        points=body.get("points"), invalid_numbers=body.get("invalid_numbers")
    )
    return web.json_response(state)


async def control_dlr(request: web.Request) -> web.Response:
    body = await common.json_body(request, ("delay", "retry_delay", "default", "status"))
    state = request.app[SIM_KEY].set_dlr(
        delay=body.get("delay"),
        retry_delay=body.get("retry_delay"),
        default=body.get("default"),
        status=body.get("status"),
    )
    return web.json_response(state)


async def control_inject_reply(request: web.Request) -> web.Response:
    body = await common.json_body(request, ("msgid", "smbody", "srcaddr", "encoding", "timestamp"))
    for key in ("msgid", "smbody"):
        if not isinstance(body.get(key), str):
            raise SimError(f"{key} must be a string")
    for key in ("srcaddr", "encoding", "timestamp"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise SimError(f"{key} must be a string")
    entry = await request.app[SIM_KEY].inject_reply(
        body["msgid"],
        body["smbody"],
        srcaddr=body.get("srcaddr"),
        encoding=body.get("encoding"),
        timestamp=body.get("timestamp"),
    )
    return web.json_response(entry)


def _add_control_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_control/state", control_state)
    r.add_get("/_control/requests", control_requests)
    r.add_get("/_control/sends", control_sends)
    r.add_get("/_control/messages/{msgid}", control_message)
    r.add_get("/_control/dlr", control_dlr_log)
    r.add_put("/_control/dlr", control_dlr)
    r.add_put("/_control/fault", control_fault)
    r.add_put("/_control/account", control_account)
    r.add_get("/_control/replies", control_replies)
    r.add_post("/_control/replies", control_inject_reply)


def build_app(sim: SmsgoSim, side: str | None) -> web.Application:
    """The API of one side (`primary`/`backup`) plus the control API; `side=None`: control
    only."""
    app = web.Application(middlewares=[common.control_errors])
    app[SIM_KEY] = sim
    _add_control_routes(app)
    if side is not None:
        app[SIDE_KEY] = side
        app.router.add_get("/sms_gw/{operation}", smsgo_api)
    return app


# --- running it --------------------------------------------------------------------------------


@dataclass
class RunningSmsgoSim:
    sim: SmsgoSim
    host: str
    _listeners: dict[str, _Listener]
    _runners: list[web.AppRunner]

    def _root(self, name: str) -> str:
        return common.http_url(self.host, self._listeners[name].port)

    @property
    def url(self) -> str:
        """What goipd's `providers.smsgo.url` is set to."""
        return f"{self._root('primary')}/sms_gw"

    @property
    def backup_url(self) -> str:
        return f"{self._root('backup')}/sms_gw"

    @property
    def control_url(self) -> str:
        """The control API on a port no fault ever takes down."""
        return f"{self._root('control')}/_control"

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        await self.sim.close()


async def start_smsgo_sim(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> RunningSmsgoSim:
    """Start the primary on `port`, the backup on `backup_port` and the control API on
    `control_port` (both default 0: any free port); other options go to `SmsgoSim`."""
    if not is_loopback(host):
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")
    ports = {
        "primary": port,
        "backup": int(options.pop("backup_port", 0)),
        "control": int(options.pop("control_port", 0)),
    }
    sim = SmsgoSim(**options)
    runners: list[web.AppRunner] = []
    listeners: dict[str, _Listener] = {}
    try:
        for name, wanted in ports.items():
            app = build_app(sim, name if name in SIDES else None)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
            await runner.setup()
            runners.append(runner)
            listener = _Listener(runner, host, wanted)
            await listener.start()
            listeners[name] = listener
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    sim._listeners = {side: listeners[side] for side in SIDES}
    return RunningSmsgoSim(sim, host, listeners, runners)
