"""A simulated c123 SMS service (as c123's document describes it), loopback only.

It answers at `/tx/` (GET or POST), `/rx/` and `/mm/` the way the document shows: plain-text
replies in GBK, bare status codes, `100{&}number||text||time||gateway{&}...` for replies (an
empty body when there are none), `100||N` for counts. It checks what the real service checks:
`uid` and the lowercase MD5 `pwd` (101), the credit (102), numbers (108 empty, 106 more than 50
by GET or 2000 by POST, 112 not a domestic mobile or landline), the content (108 empty, 105 too
long, 104 banned words or bytes that are not valid in the declared encoding: GBK by default,
UTF-8 with `encode=utf8`) and the `time` format (113); optionally the send rate (107, and 110
for single-number sends).

Replies are handed out once; `/rx/` polls closer together than `rx_min_interval` (default 10
minutes, as the document asks) are refused with 107 ("too fast": the document names no code for
this, 107 is the closest of its codes). With `time=YYYY-MM-DD_HH` every reply of that Beijing
hour comes again, as the document allows.

Tests drive it in-process (`C123Sim` attributes and methods) or through the JSON control API:

- `GET /_control/state`, `GET /_control/sent` (accepted sends), `GET /_control/replies`
- `PUT /_control/fault` `{"mode": "...", "delay": 2.0, "code": "111"}`, modes in `FAULT_MODES`
- `PUT /_control/account` `{"balance", "sent_total", "rx_min_interval", "min_send_interval",
  "min_single_interval", "max_content_chars", "banned_words", "invalid_numbers"}`
- `POST /_control/replies` `{"from_number", "content", "gateway"?, "time"?}` queues a reply
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from goipd.sim import common
from goipd.sim.common import SimError
from goipd.sim.goip import is_loopback

log = structlog.get_logger("goipd.sim.c123")

BEIJING: Final = timezone(timedelta(hours=8), "CST")
FAULT_CODES: Final[Mapping[str, str]] = {
    "auth": "101",
    "no_credit": "102",
    "too_fast": "107",
    "frozen": "109",
    "too_frequent": "110",
    "forbidden": "116",
}
FAULT_MODES: Final = (
    "none",
    *FAULT_CODES,
    "code",
    "slow",
    "timeout",
    "http_500",
    "html",
    "truncated",
    "reset",
    "down",
)
"""auth/frozen/forbidden answer their code on every endpoint; no_credit answers 102 on `/tx/`
and a balance of 0 on `/mm/`; too_fast/too_frequent and `code` (any code, given as `code`)
answer on `/tx/` only. slow and timeout sit on each request for `delay` seconds, then answer
normally; http_500, html (an error page), truncated (half the reply), reset (TCP RST), down (the
connection closed without an answer, as when the service is gone)."""
ACCOUNT_FAULTS: Final = frozenset({"auth", "frozen", "forbidden"})
GET_MAX_NUMBERS: Final = 50
POST_MAX_NUMBERS: Final = 2000
HTML_PAGE: Final = "<html><head><title>中国短信网</title></head><body>系统维护中</body></html>"
_NUMBER = re.compile(r"(?:1[3-9][0-9]{9}|0[1-9][0-9]{8,10})\Z")
_MID = re.compile(r"[0-9]{0,8}\Z")


@dataclass
class Fault(common.Fault):
    code: str = "103"
    """What the `code` mode answers on `/tx/`."""


@dataclass
class Reply:
    from_number: str
    content: str
    gateway: str
    time: str
    """Beijing time `YYYY-MM-DD HH:MM:SS`, as the document's replies show it."""

    def line(self) -> str:
        return f"{self.from_number}||{self.content}||{self.time}||{self.gateway}"


@dataclass
class C123Sim:
    """One c123 account and the service's behaviour towards it."""

    uid: str = "9999"
    password: str = field(default="c123-password", repr=False)
    pwd_md5: str | None = field(default=None, repr=False)
    """Set to accept a known MD5 directly (the document's examples) instead of `password`'s."""
    balance: int = 10_000
    """SMS left; each accepted number costs one."""
    sent_total: int = 0
    gateway: str = "1068112227282"
    rx_min_interval: float = 600.0
    min_send_interval: float = 0.0
    """Sends closer together than this get 107; 0 = no limit."""
    min_single_interval: float = 0.0
    """Single-number sends closer together than this get 110; 0 = no limit."""
    max_content_chars: int = 500
    banned_words: tuple[str, ...] = ()
    invalid_numbers: frozenset[str] = frozenset()
    """Well-formed numbers the service still calls wrong (112), e.g. unassigned ranges."""
    fault: Fault = field(default_factory=Fault)
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every accepted send: mobiles, content, time, mid, encode, method, at."""
    pending: list[Reply] = field(default_factory=list)
    """Replies not handed out yet."""
    handed_out: list[Reply] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _last_send: float | None = field(default=None, init=False, repr=False)
    _last_single: float | None = field(default=None, init=False, repr=False)
    _last_rx: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.set_fault(self.fault.mode, self.fault.delay, self.fault.code)
        if self.pwd_md5 is None:
            self.pwd_md5 = hashlib.md5(self.password.encode(), usedforsecurity=False).hexdigest()

    # --- the vendor API, minus HTTP ------------------------------------------------------------

    def _account_error(self, params: Mapping[str, str]) -> str | None:
        if self.fault.mode in ACCOUNT_FAULTS:
            return FAULT_CODES[self.fault.mode]
        # Exact comparison: the document asks for the lowercase MD5.
        if params.get("uid") != self.uid or params.get("pwd") != self.pwd_md5:
            return "101"
        return None

    def tx(self, params: Mapping[str, str], method: str) -> str:
        """The `/tx/` decision for decoded parameters: the status code."""
        self.counters["tx_requests"] += 1
        code = self._tx(params, method)
        self.counters[f"tx_{code}"] += 1
        return code

    def _tx(self, params: Mapping[str, str], method: str) -> str:
        error = self._account_error(params)
        if error is not None:
            return error
        mode = self.fault.mode
        if mode in ("no_credit", "too_fast", "too_frequent"):
            return FAULT_CODES[mode]
        if mode == "code":
            return self.fault.code
        mobiles = [m.strip() for m in params.get("mobile", "").split(",") if m.strip()]
        content = params.get("content", "")
        if not mobiles or not content:
            return "108"
        limit = GET_MAX_NUMBERS if method == "GET" else POST_MAX_NUMBERS
        if len(mobiles) > limit:
            return "106"
        if any(not _NUMBER.match(m) or m in self.invalid_numbers for m in mobiles):
            return "112"
        if any(word in content for word in self.banned_words):
            return "104"
        if len(content) > self.max_content_chars:
            return "105"
        scheduled = params.get("time") or None
        if scheduled is not None:
            try:
                datetime.strptime(scheduled, "%Y-%m-%d %H:%M")
            except ValueError:
                return "113"
        if not _MID.match(params.get("mid", "")):
            return "103"
        now = self.clock()
        if _too_soon(now, self._last_send, self.min_send_interval):
            return "107"
        if len(mobiles) == 1 and _too_soon(now, self._last_single, self.min_single_interval):
            return "110"
        if self.balance < len(mobiles):
            return "102"
        self.balance -= len(mobiles)
        self.sent_total += len(mobiles)
        self._last_send = now
        if len(mobiles) == 1:
            self._last_single = now
        self.sent.append(
            {
                "mobiles": mobiles,
                "content": content,
                "time": scheduled,
                "mid": params.get("mid") or None,
                "encode": params.get("encode", ""),
                "method": method,
                "at": time.time(),
            }
        )
        return "100"

    def rx(self, params: Mapping[str, str]) -> str:
        """The `/rx/` reply text (empty when there is nothing to hand out)."""
        self.counters["rx_requests"] += 1
        error = self._account_error(params)
        if error is not None:
            return error
        now = self.clock()
        if self._last_rx is not None and now - self._last_rx < self.rx_min_interval:
            self.counters["rx_too_fast"] += 1
            return "107"
        hour = params.get("time")
        if hour:
            try:
                wanted = datetime.strptime(hour, "%Y-%m-%d_%H").strftime("%Y-%m-%d %H")
            except ValueError:
                return "113"
            self._last_rx = now
            replies = [r for r in [*self.handed_out, *self.pending] if r.time[:13] == wanted]
        else:
            self._last_rx = now
            replies, self.pending = self.pending, []
            self.handed_out.extend(replies)
        if not replies:
            return ""
        return "100{&}" + "{&}".join(reply.line() for reply in replies)

    def mm(self, params: Mapping[str, str]) -> str:
        """The `/mm/` reply text: balance, or the sent total with `cmd=send`."""
        self.counters["mm_requests"] += 1
        error = self._account_error(params)
        if error is not None:
            return error
        cmd = params.get("cmd", "")
        if cmd == "send":
            return f"100||{self.sent_total}"
        if cmd:
            return "103"
        return f"100||{0 if self.fault.mode == 'no_credit' else self.balance}"

    def add_reply(
        self,
        from_number: str,
        content: str,
        *,
        gateway: str | None = None,
        at: datetime | str | None = None,
    ) -> Reply:
        """Someone answers an SMS: the reply waits for the next `/rx/` poll."""
        if not from_number or not content:
            raise SimError("from_number and content must be non-empty")
        if isinstance(at, str):
            try:
                datetime.strptime(at, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                raise SimError("time must be 'YYYY-MM-DD HH:MM:SS' (Beijing time)") from None
            stamp = at
        else:
            when = at or datetime.now(BEIJING)
            if when.tzinfo is not None:
                when = when.astimezone(BEIJING)
            stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        reply = Reply(from_number, content, gateway or self.gateway, stamp)
        self.pending.append(reply)
        self.counters["replies_added"] += 1
        return reply

    # --- state changes (mirrors the control API) -----------------------------------------------

    def set_fault(self, mode: str, delay: float | None = None, code: str | None = None) -> Fault:
        common.fault_mode(mode, FAULT_MODES)
        if code is not None and not re.fullmatch(r"[0-9]{3}", str(code)):
            raise SimError("code must be a 3-digit status code")
        self.fault = Fault(
            mode,
            self.fault.delay if delay is None else common.seconds(delay, "delay"),
            self.fault.code if code is None else str(code),
        )
        log.info("sim_fault_set", sim="c123", mode=mode, delay=self.fault.delay)
        return self.fault

    def set_account(self, **changes: Any) -> dict[str, Any]:
        for name, value in changes.items():
            if name in ("balance", "sent_total", "max_content_chars"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise SimError(f"{name} must be an integer >= 0")
            elif name in ("rx_min_interval", "min_send_interval", "min_single_interval"):
                value = common.seconds(value, name)
            elif name == "banned_words":
                value = tuple(common.strings(value, name))
            elif name == "invalid_numbers":
                value = frozenset(common.strings(value, name))
            else:
                raise SimError(f"unknown account field {name!r}")
            setattr(self, name, value)
        return self.state()

    def state(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "balance": self.balance,
            "sent_total": self.sent_total,
            "rx_min_interval": self.rx_min_interval,
            "min_send_interval": self.min_send_interval,
            "min_single_interval": self.min_single_interval,
            "max_content_chars": self.max_content_chars,
            "banned_words": list(self.banned_words),
            "invalid_numbers": sorted(self.invalid_numbers),
            "fault": asdict(self.fault),
            "sent": len(self.sent),
            "pending_replies": len(self.pending),
            "handed_out_replies": len(self.handed_out),
            "counters": dict(self.counters),
        }


def _too_soon(now: float, last: float | None, interval: float) -> bool:
    return interval > 0 and last is not None and now - last < interval


# --- HTTP ---------------------------------------------------------------------------------------

SIM_KEY: Final = web.AppKey("goipd_c123_sim", C123Sim)


async def _params(request: web.Request) -> dict[str, str] | None:
    """Query and form fields together (the form wins), decoded as `encode` says: GBK unless
    `encode=utf8`. None when the bytes are not valid in that encoding."""
    raw = request.rel_url.raw_query_string.encode("ascii", errors="replace")
    if request.method == "POST":
        body = await request.read()
        raw = raw + b"&" + body if raw else body
    # Field names and `encode` are ASCII; latin-1 reads them whatever the values hold.
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    declared = {k: v for k, v in pairs}.get("encode", "").lower()
    encoding = "utf-8" if declared in ("utf8", "utf-8") else "gbk"
    try:
        decoded = parse_qsl(
            raw.decode("latin-1"), keep_blank_values=True, encoding=encoding, errors="strict"
        )
    except UnicodeDecodeError:
        return None
    return dict(decoded)


def _reply(text: str, mode: str) -> web.Response:
    body = text.encode("gbk", errors="replace")
    if mode == "truncated":
        body = body[: len(body) // 2]
    # The document: replies are plain text in GBK; no charset is declared, as on the real site.
    return web.Response(body=body, content_type="text/html")


async def _api(
    request: web.Request, answer: Callable[[C123Sim, dict[str, str]], str], undecodable: str
) -> web.StreamResponse:
    """Faults first, then `answer` to the decoded parameters (`undecodable` when the bytes are
    not valid in the declared encoding)."""
    sim = request.app[SIM_KEY]
    sim.counters["http_requests"] += 1
    html_page = HTML_PAGE.encode("gbk")
    early = await common.fault_response(request, sim.fault, html_page=html_page)
    if early is not None:
        return early
    params = await _params(request)
    return _reply(undecodable if params is None else answer(sim, params), sim.fault.mode)


async def tx_api(request: web.Request) -> web.StreamResponse:
    return await _api(request, lambda sim, params: sim.tx(params, request.method), "104")


async def rx_api(request: web.Request) -> web.StreamResponse:
    return await _api(request, C123Sim.rx, "101")


async def mm_api(request: web.Request) -> web.StreamResponse:
    return await _api(request, C123Sim.mm, "101")


async def control_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].state())


async def control_sent(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].sent)


async def control_replies(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response(
        {
            "pending": [asdict(r) for r in sim.pending],
            "handed_out": [asdict(r) for r in sim.handed_out],
        }
    )


async def control_add_reply(request: web.Request) -> web.Response:
    fields = ("from_number", "content", "gateway", "time")
    body = await common.json_body(request, fields, kind="reply")
    values = [body.get(k) for k in fields]
    if not all(v is None or isinstance(v, str) for v in values):
        raise SimError("reply fields must be strings")
    reply = request.app[SIM_KEY].add_reply(
        str(body.get("from_number") or ""),
        str(body.get("content") or ""),
        gateway=body.get("gateway"),
        at=body.get("time"),
    )
    return web.json_response(asdict(reply), status=201)


async def control_fault(request: web.Request) -> web.Response:
    body = await common.json_body(request, ("mode", "delay", "code"), kind="fault")
    fault = request.app[SIM_KEY].set_fault(
        str(body.get("mode", "none")), body.get("delay"), body.get("code")
    )
    return web.json_response(asdict(fault))


async def control_account(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].set_account(**await common.json_body(request)))


def build_app(sim: C123Sim) -> web.Application:
    # 2000 numbers and a long text fit easily.
    app = web.Application(client_max_size=256 * 1024, middlewares=[common.control_errors])
    app[SIM_KEY] = sim
    r = app.router
    for path, handler in (("/tx/", tx_api), ("/rx/", rx_api), ("/mm/", mm_api)):
        r.add_get(path, handler)
        r.add_post(path, handler)
    r.add_get("/_control/state", control_state)
    r.add_get("/_control/sent", control_sent)
    r.add_get("/_control/replies", control_replies)
    r.add_post("/_control/replies", control_add_reply)
    r.add_put("/_control/fault", control_fault)
    r.add_put("/_control/account", control_account)
    return app


class RunningC123Sim(common.RunningSim[C123Sim]):
    """`url` is what goipd's `providers.c123.url` is set to."""


async def start_c123_sim(host: str = "127.0.0.1", port: int = 0, **options: Any) -> RunningC123Sim:
    """Options are `C123Sim` fields (uid, password, balance, rx_min_interval, ...)."""
    if not is_loopback(host):
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")
    for name in ("banned_words",):
        if isinstance(options.get(name), Iterable) and not isinstance(options[name], str):
            options[name] = tuple(options[name])
    if "invalid_numbers" in options:
        options["invalid_numbers"] = frozenset(options["invalid_numbers"])
    if isinstance(options.get("fault"), str):
        options["fault"] = Fault(options["fault"])
    sim = C123Sim(**options)
    runner, bound = await common.serve(build_app(sim), host, port)
    return RunningC123Sim(sim, runner, host, bound)
