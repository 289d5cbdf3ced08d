"""A simulated PaaSoo international SMS API (as PaaSoo's document describes it), loopback only.

`GET /json?key=..&secret=..&to=..&text=..` answers as the document shows, failure JSON with its
misplaced quote included (`{"status_code":"illegal secret.,"status":"401"}`; `quirks=False`
writes valid JSON), and checks what the real service checks: the key and secret (401), the
account's IP allow-list (404), the parameters (400: missing, more than 50 numbers, a number not
in `<cc><number>` form, text that is not UTF-8) and the balance (403, one unit per number).

Each accepted number gets a delivery report, pushed like PaaSoo does: a GET to the account's
`client_url` (the console setting) with `type=dlr&messageid&to&status&statuscode&errcode&network`
after `dlr_delay` seconds; delivered unless a per-number status, or a blacklisted keyword in the
text (402), says otherwise.

Tests drive it in-process (`PaasooSim` attributes and methods) or through the JSON control API:

- `GET /_control/state`, `GET /_control/sent` (accepted calls), `GET /_control/dlrs` (pushes)
- `PUT /_control/fault` `{"mode": "...", "delay": 2.0}`, modes in `FAULT_MODES`
- `PUT /_control/dlr` `{"client_url", "delay", "default": {...}, "numbers": {"6588..": {...}}}`
  where a status is `{"status": "404", "statuscode": "Absent Subscriber Permanent", "errcode": "1"}`
- `PUT /_control/account` `{"balance", "allowed_ips", "blacklist_numbers", "blacklist_keywords"}`
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from yarl import URL

from goipd.sim import common
from goipd.sim.common import Fault, SimError
from goipd.sim.goip import is_loopback

log = structlog.get_logger("goipd.sim.paasoo")

FAULT_MODES: Final = (
    "none",
    "auth",
    "no_credit",
    "restricted",
    "ip_denied",
    "slow",
    "timeout",
    "http_500",
    "html",
    "truncated",
    "reset",
    "down",
)
"""auth → 401, no_credit → 403 balance, restricted → 403 blacklist, ip_denied → 404; slow and
timeout sit on each request for `delay` seconds, then answer normally; http_500, html (a login
page), truncated (half the JSON), reset (TCP RST, no answer), down
(the connection closed without an answer, as when the service is gone)."""
MAX_NUMBERS: Final = 50
HTML_PAGE: Final = "<html><head><title>PaaSoo</title></head><body><h1>Sign in</h1></body></html>"
DELIVERED: Final = {"status": "0", "statuscode": "delivered", "errcode": "1"}
"""The document's example report."""


@dataclass
class PaasooSim:
    """One PaaSoo account and the service's behaviour towards it."""

    key: str = "paasoo-key"
    secret: str = field(default="paasoo-secret", repr=False)
    balance: int = 10_000
    """Messages left; each accepted number costs one. -1 = unlimited."""
    allowed_ips: tuple[str, ...] | None = None
    """The account's IP allow-list; None = any address."""
    blacklist_numbers: frozenset[str] = frozenset()
    """Numbers (`<cc><number>`) the account may not send to: 403 at send time."""
    blacklist_keywords: tuple[str, ...] = ()
    """Texts containing one are accepted but their reports say 402."""
    client_url: str | None = None
    dlr_delay: float = 0.05
    dlr_default: dict[str, str] = field(default_factory=lambda: dict(DELIVERED))
    dlr_numbers: dict[str, dict[str, str]] = field(default_factory=dict)
    network: str = "52099"
    quirks: bool = True
    """Failure JSON with the document's misplaced quote."""
    error_http_status: bool = False
    """Also send a failure's status as the HTTP status (the document shows only bodies)."""
    fault: Fault = field(default_factory=Fault)
    push_attempts: int = 3
    push_backoff: float = 0.05
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every accepted call: messageid, numbers, text, at."""
    dlrs: list[dict[str, Any]] = field(default_factory=list)
    """Every report pushed (or given up on): its parameters and the outcome."""
    counters: Counter[str] = field(default_factory=Counter)
    _next_id: int = field(default=0x368321, init=False, repr=False)
    _background: common.Background = field(
        default_factory=common.Background, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.set_fault(self.fault.mode, self.fault.delay)
        self.client_url = common.opt_url(self.client_url, "client_url")
        self.dlr_default = _dlr_spec(self.dlr_default)
        self.dlr_numbers = {n: _dlr_spec(spec) for n, spec in self.dlr_numbers.items()}

    # --- the vendor API, minus HTTP ------------------------------------------------------------

    def send(self, params: Mapping[str, str], remote: str | None) -> dict[str, str]:
        """The `/json` decision for already-decoded parameters: the reply object."""
        self.counters["requests"] += 1
        mode = self.fault.mode
        key, secret = params.get("key", ""), params.get("secret", "")
        if mode == "auth" or not key or key != self.key or secret != self.secret:
            return self.error_reply("401", "illegal secret." if key == self.key else "illegal key.")
        if mode == "ip_denied" or (self.allowed_ips is not None and remote not in self.allowed_ips):
            return self.error_reply("404", "ip not allowed.")
        to, text = params.get("to", "").strip(), params.get("text", "")
        if not to:
            return self.error_reply("400", "missing parameter to.")
        if not text:
            return self.error_reply("400", "missing parameter text.")
        numbers = [n.strip() for n in to.split(",")]
        if len(numbers) > MAX_NUMBERS:
            return self.error_reply("400", f"too many numbers, at most {MAX_NUMBERS}.")
        if any(not (n.isascii() and n.isdigit() and 7 <= len(n) <= 15) for n in numbers):
            return self.error_reply("400", "invalid number.")
        if mode == "no_credit" or 0 <= self.balance < len(numbers):
            return self.error_reply("403", "insufficient balance.")
        if mode == "restricted" or any(n in self.blacklist_numbers for n in numbers):
            return self.error_reply("403", "number in blacklist.")
        if self.balance >= 0:
            self.balance -= len(numbers)
        self._next_id += 1
        messageid = f"{int(time.time()) & 0xFFFFFF:06x}{self._next_id:08x}"
        self.sent.append({"messageid": messageid, "to": numbers, "text": text, "at": time.time()})
        self.counters["accepted"] += 1
        self.counters["numbers_accepted"] += len(numbers)
        for number in numbers:
            self._background.spawn(self._report(messageid, number, text))
        return {"status": "0", "messageid": messageid}

    def error_reply(self, status: str, message: str) -> dict[str, str]:
        self.counters[f"status_{status}"] += 1
        return {"status_code": message, "status": status}

    def encode(self, reply: Mapping[str, str]) -> str:
        if self.quirks and reply.get("status") != "0":
            # Verbatim the document's failure form: the closing quote after the comma.
            return f'{{"status_code":"{reply["status_code"]},"status":"{reply["status"]}"}}'
        return json.dumps(dict(reply), ensure_ascii=False, separators=(",", ":"))

    def report_for(self, number: str, text: str) -> dict[str, str]:
        spec = self.dlr_numbers.get(number)
        if spec is None and any(word in text for word in self.blacklist_keywords):
            spec = _dlr_spec({"status": "402", "statuscode": "blacklist keyword"})
        return spec or self.dlr_default

    async def _report(self, messageid: str, number: str, text: str) -> None:
        await asyncio.sleep(self.dlr_delay)
        status = self.report_for(number, text)
        params = {
            "type": "dlr",
            "messageid": messageid,
            "to": number,
            "status": status["status"],
            "statuscode": status["statuscode"],
            "errcode": status["errcode"],
            "network": self.network,
        }
        outcome = await self.push(params)
        self.dlrs.append({**params, "outcome": outcome, "at": time.time()})

    async def push(self, params: Mapping[str, str]) -> str:
        """GET one report to `client_url`, a few tries, then give up like a real service."""
        if self.client_url is None:
            self.counters["dlr_no_url"] += 1
            return "no_url"
        outcome, _ = await self._background.push(
            "GET",
            URL(self.client_url).extend_query(params),
            session_timeout=5,
            attempts=self.push_attempts,
            backoff=self.push_backoff,
        )
        if outcome == "ok":
            self.counters["dlr_ok"] += 1
            return outcome
        self.counters["dlr_failed"] += 1
        log.warning("dlr_push_dropped", url=common.url_for_log(self.client_url), outcome=outcome)
        return outcome

    async def settle(self) -> None:
        """Wait until every report due so far has been pushed (or given up on)."""
        while self._background.tasks:
            await asyncio.gather(*list(self._background.tasks), return_exceptions=True)

    # --- state changes (mirrors the control API) -----------------------------------------------

    def set_fault(self, mode: str, delay: float | None = None) -> Fault:
        self.fault = Fault(
            common.fault_mode(mode, FAULT_MODES),
            self.fault.delay if delay is None else common.seconds(delay, "delay"),
        )
        log.info("sim_fault_set", sim="paasoo", mode=mode, delay=self.fault.delay)
        return self.fault

    def set_dlr(
        self,
        *,
        client_url: str | common.Keep | None = common.KEEP,
        delay: float | None = None,
        default: Mapping[str, Any] | None = None,
        numbers: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Without `client_url` the URL stays as it is; None removes it."""
        if not isinstance(client_url, common.Keep):
            self.client_url = common.opt_url(client_url, "client_url")
        if delay is not None:
            self.dlr_delay = common.seconds(delay, "delay")
        if default is not None:
            self.dlr_default = _dlr_spec(default)
        if numbers is not None:
            if not isinstance(numbers, Mapping):
                raise SimError("numbers must map a number to a status object")
            self.dlr_numbers = {str(n): _dlr_spec(spec) for n, spec in numbers.items()}
        return self.dlr_state()

    def dlr_state(self) -> dict[str, Any]:
        return {
            "client_url": self.client_url,
            "delay": self.dlr_delay,
            "default": self.dlr_default,
            "numbers": self.dlr_numbers,
        }

    def set_account(self, **changes: Any) -> dict[str, Any]:
        for name, value in changes.items():
            if name == "balance":
                if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                    raise SimError("balance must be an integer >= -1 (-1 = unlimited)")
                self.balance = value
            elif name == "allowed_ips":
                self.allowed_ips = None if value is None else tuple(common.strings(value, name))
            elif name == "blacklist_numbers":
                self.blacklist_numbers = frozenset(common.strings(value, name))
            elif name == "blacklist_keywords":
                self.blacklist_keywords = tuple(common.strings(value, name))
            else:
                raise SimError(f"unknown account field {name!r}")
        return self.state()

    def state(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "balance": self.balance,
            "allowed_ips": None if self.allowed_ips is None else list(self.allowed_ips),
            "blacklist_numbers": sorted(self.blacklist_numbers),
            "blacklist_keywords": list(self.blacklist_keywords),
            "fault": asdict(self.fault),
            "dlr": self.dlr_state(),
            "quirks": self.quirks,
            "sent": len(self.sent),
            "dlrs": len(self.dlrs),
            "counters": dict(self.counters),
        }

    async def close(self) -> None:
        await self._background.close()


def _dlr_spec(spec: Any) -> dict[str, str]:
    """A complete report status: `status` is required, the rest defaults as the document's
    example does for success."""
    if not isinstance(spec, Mapping):
        raise SimError("a report status must be an object")
    unknown = set(spec) - {"status", "statuscode", "errcode"}
    if unknown:
        raise SimError(f"unknown report fields: {', '.join(sorted(unknown))}")
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in spec.values()):
        raise SimError("report fields must be strings")
    if "status" not in spec:
        raise SimError("a report status needs a status")
    status = str(spec["status"])
    return {
        "status": status,
        "statuscode": str(spec.get("statuscode", "delivered" if status == "0" else "")),
        "errcode": str(spec.get("errcode", "1" if status == "0" else "0")),
    }


# --- HTTP ---------------------------------------------------------------------------------------

SIM_KEY: Final = web.AppKey("goipd_paasoo_sim", PaasooSim)


async def send_api(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    sim.counters["http_requests"] += 1
    early = await common.fault_response(request, sim.fault, html_page=HTML_PAGE)
    if early is not None:
        return early
    try:
        # Decoded here, strictly, rather than by aiohttp: text that is not UTF-8 is a 400.
        params = dict(
            parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
        )
    except UnicodeDecodeError:
        reply = sim.error_reply("400", "text must be UTF-8 url-encoded.")
    else:
        reply = sim.send(params, request.remote)
    text = sim.encode(reply)
    if sim.fault.mode == "truncated":
        text = text[: len(text) // 2]
    status = 200
    if sim.error_http_status and reply["status"] != "0":
        status = int(reply["status"])
    return web.Response(status=status, text=text, content_type="application/json", charset="utf-8")


async def control_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].state())


async def control_sent(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].sent)


async def control_dlrs(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].dlrs)


async def control_fault(request: web.Request) -> web.Response:
    body = await common.json_body(request)
    fault = request.app[SIM_KEY].set_fault(str(body.get("mode", "none")), body.get("delay"))
    return web.json_response(asdict(fault))


async def control_dlr(request: web.Request) -> web.Response:
    body = await common.json_body(
        request, ("client_url", "delay", "default", "numbers"), kind="dlr"
    )
    state = request.app[SIM_KEY].set_dlr(
        client_url=body.get("client_url", common.KEEP),
        delay=body.get("delay"),
        default=body.get("default"),
        numbers=body.get("numbers"),
    )
    return web.json_response(state)


async def control_account(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].set_account(**await common.json_body(request)))


def build_app(sim: PaasooSim) -> web.Application:
    app = web.Application(middlewares=[common.control_errors])
    app[SIM_KEY] = sim

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        yield
        await sim.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/json", send_api)
    r.add_get("/_control/state", control_state)
    r.add_get("/_control/sent", control_sent)
    r.add_get("/_control/dlrs", control_dlrs)
    r.add_put("/_control/fault", control_fault)
    r.add_put("/_control/dlr", control_dlr)
    r.add_put("/_control/account", control_account)
    return app


class RunningPaasooSim(common.RunningSim[PaasooSim]):
    """`url` is what goipd's `providers.paasoo.url` is set to."""

    async def close(self) -> None:
        await super().close()
        await self.sim.close()


async def start_paasoo_sim(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> RunningPaasooSim:
    """Options are `PaasooSim` fields (key, secret, balance, client_url, dlr_delay, ...)."""
    if not is_loopback(host):
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")
    for name in ("allowed_ips", "blacklist_keywords"):
        if isinstance(options.get(name), Iterable) and not isinstance(options[name], str):
            options[name] = tuple(options[name])
    if "blacklist_numbers" in options:
        options["blacklist_numbers"] = frozenset(options["blacklist_numbers"])
    if isinstance(options.get("fault"), str):
        options["fault"] = Fault(options["fault"])
    sim = PaasooSim(**options)
    runner, bound = await common.serve(build_app(sim), host, port)
    return RunningPaasooSim(sim, runner, host, bound)
