"""A simulated GoIP SMS Server fleet: many servers on one port, told apart by a path prefix.

Server `hq` answers at `http://HOST:PORT/hq/goip/<api>/` the way the vendor document
(the vendor's JSON API document) shows, quirks included: every value a string, arrays
ending in `},\\n]`, replies labelled `text/html`. It pushes send results and inbound SMS to
configured URLs and can be told to misbehave (faults, dropped reports, line churn). Tests, the
demo and the benchmarks drive it through its control API under `/_control/` (no auth: it only
ever listens on loopback) or, in-process, through the same methods on `SimFleet`/`SimServer`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
import time
from collections import Counter, deque
from collections.abc import (
    AsyncIterator,
    Coroutine,
    Iterable,
    Mapping,
)
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Final

import structlog
from aiohttp import web

from goipd.sim.common import (
    KEEP,
    Background,
    Fault,
    Keep,
    control_errors,
    fault_mode,
    fault_response,
    http_url,
    json_body,
    opt_url,
    seconds,
    serve,
    url_for_log,
)
from goipd.sim.common import SimError as SimError

log = structlog.get_logger("goipd.sim")

FAULT_MODES: Final = (
    "none",
    "timeout",
    "slow",
    "http_500",
    "html",
    "truncated_json",
    "wrong_auth",
    "reset",
    "down",
)
REG_STATES: Final = ("LOGIN", "LOGOUT", "")
APIS: Final = frozenset({"sendsms", "querysms", "querylines"})
MAX_NUMBERS: Final = 9999
LINE_LOST_CODE: Final = "331"
"""err_code when the assigned line stopped being usable before its turn came ("no network
service"): goipd classes it as a line fault and retries elsewhere, which is what it should do."""
NO_LINE_CODE: Final = "302"
"""err_code for a recipient no line had quota left for ("operation not allowed")."""
HTML_ERROR_PAGE: Final = (
    "<html><head><title>SMS Server</title></head>"
    "<body><h1>Error</h1><p>Please login again.</p></body></html>"
)
SERVER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SERVER_SPEC_KEYS: Final = frozenset(
    {
        "name",
        "username",
        "password",
        "lines",
        "status_push_url",
        "inbound_push_url",
        "send_delay",
        "receipt_delay",
        "quirks",
        "drop_reports",
        "fault",
    }
)


class SimConflict(SimError):
    """The thing to add exists already; becomes HTTP 409."""

    status = 409


UNSET: Final = KEEP


# --- data model ---------------------------------------------------------------------------------


@dataclass
class SimLine:
    line_id: str
    online: bool = True
    reg: str = "LOGIN"
    remain_sms: int = -1
    day_remain_sms: int = -1
    provider: str = "default"
    fail_code: str | None = None
    """Every send on this line fails with this CMS error code."""
    receipt: bool = True
    """Push a delivery receipt report shortly after each successful send."""

    @property
    def usable(self) -> bool:
        return (
            self.online
            and self.reg == "LOGIN"
            and self.remain_sms != 0
            and self.day_remain_sms != 0
        )

    def querylines_entry(self) -> dict[str, str]:
        return {
            "goip_line": self.line_id,
            "online": "1" if self.online else "0",
            "reg": self.reg,
            "remain_sms": str(self.remain_sms),
            "day_remain_sms": str(self.day_remain_sms),
        }

    def state(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SimLine:
        if not isinstance(spec, Mapping):
            raise SimError("a line must be an object")
        unknown = set(spec) - _LINE_FIELDS
        if unknown:
            raise SimError(f"unknown line fields: {', '.join(sorted(unknown))}")
        if "line_id" not in spec:
            raise SimError("a line needs a line_id")
        return cls(**{key: _line_value(key, value) for key, value in spec.items()})


_LINE_FIELDS: Final = frozenset(f.name for f in fields(SimLine))


def _line_value(key: str, value: Any) -> Any:
    """Checks one line field; the control API is how tests break things, so typos must fail."""
    if key == "line_id":
        if not isinstance(value, str) or not value or "/" in value:
            raise SimError("line_id must be a non-empty string without '/'")
    elif key in ("online", "receipt"):
        if not isinstance(value, bool):
            raise SimError(f"{key} must be true or false")
    elif key == "reg":
        if value not in REG_STATES:
            raise SimError(f"reg must be one of {list(REG_STATES)}")
    elif key in ("remain_sms", "day_remain_sms"):
        # bool is an int subclass; `true` as a quota is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise SimError(f"{key} must be an integer >= -1 (-1 = unlimited)")
    elif key == "provider":
        if not isinstance(value, str):
            raise SimError("provider must be a string")
    elif key == "fail_code":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is not None and (not isinstance(value, str) or not value):
            raise SimError("fail_code must be a CMS code string or null")
    else:
        raise SimError(f"unknown line field {key!r}")
    return value


@dataclass
class SubTask:
    task_id: str
    number: str
    content: str
    goip_line: str | None
    """The line this recipient was given at accept time; None when no line had quota left."""
    send: str = "unsend"
    err_code: str | None = None
    receipt: bool = False

    @property
    def sub_task_id(self) -> str:
        return f"{self.task_id}.{self.number}"

    def report(self) -> dict[str, str]:
        """The report object of the vendor doc (§2.3), as pushed and as listed by querysms."""
        shown = self.goip_line if self.send != "unsend" and self.goip_line else "null"
        body = {"taskID": self.sub_task_id, "goip_line": shown, "send": self.send}
        if self.err_code is not None:
            body["err_code"] = self.err_code
        if self.receipt:
            body["receipt"] = "1"
        return body


@dataclass(eq=False)
class SimServer:
    name: str
    username: str
    password: str = field(repr=False)
    lines: dict[str, SimLine] = field(default_factory=dict)
    status_push_url: str | None = None
    inbound_push_url: str | None = None
    send_delay: float = 0.05
    fault: Fault = field(default_factory=Fault)
    quirks: bool = True
    drop_reports: bool = False
    receipt_delay: float = 0.05
    tasks: dict[str, list[SubTask]] = field(default_factory=dict, repr=False)
    sent: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Every finished recipient send, in order: what tests assert duplicates against."""
    counters: Counter[str] = field(default_factory=Counter, repr=False)
    polled_at: deque[float] = field(default_factory=lambda: deque(maxlen=100_000), repr=False)
    """When each querylines request arrived (Unix time): tests measure polling gaps with it."""
    next_task_id: int = 1000
    _queue: list[str] = field(default_factory=list, init=False, repr=False)
    """Round-robin order of line ids: the doc's "a line that sent goes to the back"."""
    _pending: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    """Recipients assigned to a line but not yet sent; counted against its quota so one
    request cannot hand a line with 1 SMS left 50 recipients."""
    _outbox: dict[str, deque[SubTask]] = field(default_factory=dict, init=False, repr=False)
    _workers: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False, repr=False)
    _baseline: dict[str, SimLine] = field(default_factory=dict, init=False, repr=False)
    _fleet: SimFleet | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not SERVER_NAME.match(self.name) or self.name.startswith("_"):
            raise SimError(f"bad server name {self.name!r}: use [A-Za-z0-9_.-], no leading '_'")
        if self.fault.mode not in FAULT_MODES:
            raise SimError(f"fault mode must be one of {list(FAULT_MODES)}")
        for line_id, line in self.lines.items():
            if line_id != line.line_id:
                raise SimError(f"line key {line_id!r} differs from its line_id {line.line_id!r}")
            self._queue.append(line_id)
            self._baseline[line_id] = replace(line)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SimServer:
        if not isinstance(spec, Mapping):
            raise SimError("a server spec must be an object")
        unknown = set(spec) - SERVER_SPEC_KEYS
        if unknown:
            raise SimError(f"unknown server fields: {', '.join(sorted(unknown))}")
        for key in ("name", "password"):
            if not isinstance(spec.get(key), str):
                raise SimError(f"a server needs a string {key}")
        lines = [SimLine.from_spec(item) for item in spec.get("lines") or []]
        by_id = {line.line_id: line for line in lines}
        if len(by_id) != len(lines):
            raise SimError("duplicate line_id")
        fault = spec.get("fault") or {}
        if not isinstance(fault, Mapping):
            raise SimError("fault must be an object")
        return cls(
            name=spec["name"],
            username=str(spec.get("username", "root")),
            password=spec["password"],
            lines=by_id,
            status_push_url=opt_url(spec.get("status_push_url"), "status_push_url"),
            inbound_push_url=opt_url(spec.get("inbound_push_url"), "inbound_push_url"),
            send_delay=seconds(spec.get("send_delay", 0.05), "send_delay"),
            receipt_delay=seconds(spec.get("receipt_delay", 0.05), "receipt_delay"),
            quirks=bool(spec.get("quirks", True)),
            drop_reports=bool(spec.get("drop_reports", False)),
            fault=Fault(
                str(fault.get("mode", "none")), seconds(fault.get("delay", 30.0), "fault.delay")
            ),
        )

    # --- state changes (mirrors the control API) -------------------------------------------

    def line(self, line_id: str) -> SimLine:
        try:
            return self.lines[line_id]
        except KeyError:
            raise LookupError(f"server {self.name} has no line {line_id}") from None

    def set_line(self, line_id: str, **changes: Any) -> SimLine:
        line = self.line(line_id)
        if "line_id" in changes:
            raise SimError("line_id cannot change; delete and add the line instead")
        checked = {key: _line_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(line, key, value)
        log.info("sim_line_changed", server=self.name, line=line_id, **checked)
        return line

    def add_line(self, line: SimLine | Mapping[str, Any]) -> SimLine:
        new = line if isinstance(line, SimLine) else SimLine.from_spec(line)
        if new.line_id in self.lines:
            raise SimConflict(f"line {new.line_id} exists")
        self.lines[new.line_id] = new
        self._queue.append(new.line_id)
        self._baseline[new.line_id] = replace(new)
        return new

    def remove_line(self, line_id: str) -> SimLine:
        line = self.line(line_id)
        del self.lines[line_id]
        self._queue.remove(line_id)
        self._baseline.pop(line_id, None)
        return line

    def set_fault(self, mode: str, delay: float | None = None) -> Fault:
        self.fault = Fault(
            fault_mode(mode, FAULT_MODES),
            self.fault.delay if delay is None else seconds(delay, "delay"),
        )
        log.info("sim_fault_set", server=self.name, mode=mode, delay=self.fault.delay)
        return self.fault

    def set_push(
        self,
        status_url: str | Keep | None = UNSET,
        inbound_url: str | Keep | None = UNSET,
        drop_reports: bool | None = None,
    ) -> dict[str, Any]:
        if status_url is not UNSET:
            self.status_push_url = opt_url(status_url, "status_url")
        if inbound_url is not UNSET:
            self.inbound_push_url = opt_url(inbound_url, "inbound_url")
        if drop_reports is not None:
            self.drop_reports = drop_reports
        return self.push_state()

    def push_state(self) -> dict[str, Any]:
        return {
            "status_url": self.status_push_url,
            "inbound_url": self.inbound_push_url,
            "drop_reports": self.drop_reports,
        }

    def restore_line(self, line_id: str) -> SimLine:
        """Back to the state the line was created with (what churn's "restore" does)."""
        line = self.line(line_id)
        base = self._baseline.get(line_id)
        if base is not None:
            line.online, line.reg = base.online, base.reg
            line.remain_sms, line.day_remain_sms = base.remain_sms, base.day_remain_sms
        return line

    # --- the vendor API, minus HTTP --------------------------------------------------------

    def check_auth(self, body: Any) -> bool:
        auth = body.get("auth") if isinstance(body, dict) else None
        return (
            isinstance(auth, dict)
            and auth.get("username") == self.username
            and auth.get("password") == self.password
        )

    def query_lines(self) -> list[dict[str, str]]:
        return [line.querylines_entry() for line in self.lines.values()]

    def query_sms(self, task_id: Any) -> list[dict[str, str]]:
        task, _, number = str(task_id).strip().partition(".")
        return [
            sub.report() for sub in self.tasks.get(task, ()) if not number or sub.number == number
        ]

    def send_sms(
        self,
        number: Any,
        content: Any,
        provider: Any = None,
        goip_line: Any = None,
    ) -> dict[str, str]:
        """The sendsms decision: accept (and queue every recipient on a line) or reject.

        Needs a running event loop once accepted: the sends happen in the background.
        """
        numbers = _numbers(number)
        if not numbers or len(numbers) > MAX_NUMBERS or not isinstance(content, str) or not content:
            return self._reject("unknown")
        line_id = str(goip_line) if goip_line not in (None, "") else None
        group = str(provider) if provider not in (None, "") else None
        if line_id is not None:
            # The doc: goip_line wins and provider is ignored.
            line = self.lines.get(line_id)
            if line is None or not self._can_take(line):
                return self._reject("none_line")
            group = None
        elif group is not None and not any(line.provider == group for line in self.lines.values()):
            return self._reject("none_provider")
        elif not any(
            self._can_take(line) and (group is None or line.provider == group)
            for line in self.lines.values()
        ):
            return self._reject("none_line")
        fleet = self._require_fleet()
        self.next_task_id += 1
        task_id = str(self.next_task_id)
        subtasks = []
        for recipient in numbers:
            chosen = self._pick(line_id, group)
            sub = SubTask(task_id, recipient, content, chosen)
            subtasks.append(sub)
            if chosen is None:
                fleet.spawn(self._fail_unassigned(sub))
            else:
                self._pending[chosen] += 1
                self._outbox.setdefault(chosen, deque()).append(sub)
        self.tasks[task_id] = subtasks
        for chosen in {sub.goip_line for sub in subtasks if sub.goip_line is not None}:
            worker = self._workers.get(chosen)
            if worker is None or worker.done():
                self._workers[chosen] = fleet.spawn(self._line_worker(chosen))
        self.counters["tasks_accepted"] += 1
        self.counters["recipients_accepted"] += len(subtasks)
        log.debug("sim_task_accepted", server=self.name, task=task_id, recipients=len(subtasks))
        return {"result": "ACCEPT", "taskID": task_id}

    def _reject(self, reason: str) -> dict[str, str]:
        self.counters[f"rejected_{reason}"] += 1
        return {"result": "REJECT", "reason": reason}

    def _can_take(self, line: SimLine) -> bool:
        if not line.usable:
            return False
        pending = self._pending[line.line_id]
        return all(quota < 0 or quota > pending for quota in (line.remain_sms, line.day_remain_sms))

    def _pick(self, line_id: str | None, group: str | None) -> str | None:
        candidates = [line_id] if line_id is not None else self._queue
        for candidate in candidates:
            line = self.lines[candidate]
            if self._can_take(line) and (group is None or line.provider == group):
                self._queue.remove(candidate)
                self._queue.append(candidate)
                return candidate
        return None

    async def _line_worker(self, line_id: str) -> None:
        """One line sends one SMS at a time, in the order recipients were given to it."""
        outbox = self._outbox[line_id]
        while outbox:
            sub = outbox.popleft()
            sub.send = "sending"
            try:
                await asyncio.sleep(self.send_delay)
            finally:
                self._pending[line_id] -= 1
                if self._pending[line_id] <= 0:
                    del self._pending[line_id]
            # Looked up again: the line may have been deleted or changed during the send.
            line = self.lines.get(line_id)
            if line is None or not line.usable:
                self._finish(sub, line, LINE_LOST_CODE)
            elif line.fail_code is not None:
                self._finish(sub, line, line.fail_code)
            else:
                if line.remain_sms > 0:
                    line.remain_sms -= 1
                if line.day_remain_sms > 0:
                    line.day_remain_sms -= 1
                self._finish(sub, line, None)
        self._outbox.pop(line_id, None)
        self._workers.pop(line_id, None)

    async def _fail_unassigned(self, sub: SubTask) -> None:
        await asyncio.sleep(self.send_delay)
        self._finish(sub, None, NO_LINE_CODE)

    def _finish(self, sub: SubTask, line: SimLine | None, err_code: str | None) -> None:
        sub.send = "failed" if err_code is not None else "succeeded"
        sub.err_code = err_code
        self.counters[f"sends_{sub.send}"] += 1
        self.sent.append(
            {
                "task_id": sub.task_id,
                "sub_task_id": sub.sub_task_id,
                "number": sub.number,
                "content": sub.content,
                "goip_line": sub.goip_line,
                "result": sub.send,
                "err_code": err_code,
                "at": time.time(),
            }
        )
        receipt = err_code is None and line is not None and line.receipt
        self._require_fleet().spawn(self._report(sub, receipt))

    async def _report(self, sub: SubTask, receipt: bool) -> None:
        fleet = self._require_fleet()
        # Snapshot now: the receipt below must not leak into the first report.
        first = fleet.spawn(self._push_report(fleet, sub.report()))
        if receipt:
            await asyncio.sleep(self.receipt_delay)
            sub.receipt = True
            # The receipt report must not overtake the send report it follows.
            await first
            await self._push_report(fleet, sub.report())
        else:
            await first

    async def _push_report(self, fleet: SimFleet, body: dict[str, str]) -> str:
        if self.drop_reports:
            self.counters["reports_dropped_on_purpose"] += 1
            return "dropped"
        return await fleet.push(self, self.status_push_url, body, kind="status")

    async def push_inbound(
        self, goip_line: str, from_number: str, content: str, recv_time: str | None = None
    ) -> dict[str, Any]:
        """A line "receives" an SMS: push it to inbound_push_url now (doc §5)."""
        self.line(goip_line)
        body = {
            "goip_line": goip_line,
            "from_number": from_number,
            "content": content,
            # The doc specifies the server's local time, without a zone.
            "recv_time": recv_time or datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.counters["inbound"] += 1
        outcome = await self._require_fleet().push(self, self.inbound_push_url, body, "inbound")
        return {"push": outcome, "report": body}

    def encode(self, payload: Any) -> tuple[str, str]:
        """Reply text and content type, with or without the vendor's quirks."""
        if not self.quirks:
            return json.dumps(payload, ensure_ascii=False), "application/json"
        if isinstance(payload, list):
            # As the doc's examples (and, reportedly, real servers) write arrays: "},\n]".
            items = "".join(f"{json.dumps(item, ensure_ascii=False)},\n" for item in payload)
            return f"[\n{items}]", "text/html"
        return json.dumps(payload, ensure_ascii=False), "text/html"

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "username": self.username,
            "lines": [line.state() for line in self.lines.values()],
            "fault": asdict(self.fault),
            "status_push_url": self.status_push_url,
            "inbound_push_url": self.inbound_push_url,
            "drop_reports": self.drop_reports,
            "quirks": self.quirks,
            "send_delay": self.send_delay,
            "receipt_delay": self.receipt_delay,
            "next_task_id": self.next_task_id,
            "tasks": len(self.tasks),
            "sent": len(self.sent),
            "queued": sum(self._pending.values()),
            "counters": dict(self.counters),
        }

    def _require_fleet(self) -> SimFleet:
        if self._fleet is None:
            raise RuntimeError(f"server {self.name} is not part of a SimFleet")
        return self._fleet


def _numbers(number: Any) -> list[str]:
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    if not isinstance(number, str):
        return []
    # The doc: repeats within one request are merged into one recipient.
    return list(dict.fromkeys(n.strip() for n in number.split(",") if n.strip()))


# --- the fleet ----------------------------------------------------------------------------------


class SimFleet:
    def __init__(
        self,
        servers: Iterable[SimServer] = (),
        *,
        seed: int = 7,
        churn_interval: float = 0.0,
        push_attempts: int = 4,
        push_backoff: float = 0.1,
        push_timeout: float = 5.0,
    ) -> None:
        self.servers: dict[str, SimServer] = {}
        self.rng = random.Random(seed)
        self.churn_interval = churn_interval
        self.push_attempts = max(1, push_attempts)
        self.push_backoff = push_backoff
        self.push_timeout = push_timeout
        self._background = Background()
        self._churn: asyncio.Task[None] | None = None
        for server in servers:
            self.add_server(server)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], seed: int | None = None) -> SimFleet:
        if not isinstance(spec, Mapping):
            raise SimError("a fleet spec must be an object")
        unknown = set(spec) - {"servers", "seed", "churn_interval"}
        if unknown:
            raise SimError(f"unknown fleet fields: {', '.join(sorted(unknown))}")
        return cls(
            [SimServer.from_spec(item) for item in spec.get("servers") or []],
            seed=int(spec.get("seed", 7)) if seed is None else seed,
            churn_interval=seconds(spec.get("churn_interval", 0.0), "churn_interval"),
        )

    def add_server(self, server: SimServer | Mapping[str, Any]) -> SimServer:
        new = server if isinstance(server, SimServer) else SimServer.from_spec(server)
        if new.name in self.servers:
            raise SimConflict(f"server {new.name} exists")
        new._fleet = self
        self.servers[new.name] = new
        return new

    def remove_server(self, name: str) -> SimServer:
        server = self.server(name)
        del self.servers[name]
        return server

    def server(self, name: str) -> SimServer:
        try:
            return self.servers[name]
        except KeyError:
            raise LookupError(f"no server {name}") from None

    # --- background work -------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._background.spawn(coro)

    async def push(
        self, server: SimServer, url: str | None, body: dict[str, str], kind: str
    ) -> str:
        """POST one JSON report; retry a few times, then drop it as a real server would."""
        if url is None:
            return "no_url"
        outcome, attempt = await self._background.push(
            "POST",
            url,
            session_timeout=self.push_timeout,
            attempts=self.push_attempts,
            backoff=self.push_backoff,
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json"},
        )
        if outcome == "ok":
            server.counters[f"push_{kind}_ok"] += 1
            log.info(
                "report_pushed",
                server=server.name,
                kind=kind,
                task=body.get("taskID"),
                send=body.get("send"),
                receipt=body.get("receipt") == "1",
                attempt=attempt,
            )
            return outcome
        server.counters[f"push_{kind}_failed"] += 1
        log.warning(
            "report_push_dropped",
            server=server.name,
            kind=kind,
            url=url_for_log(url),
            task=body.get("taskID"),
            outcome=outcome,
            attempts=self.push_attempts,
        )
        return outcome

    # --- churn -------------------------------------------------------------------------------

    def churn_step(self) -> dict[str, str] | None:
        """One random line changes state; seeded, so a run can be replayed."""
        candidates = [server for server in self.servers.values() if server.lines]
        if not candidates:
            return None
        server = self.rng.choice(candidates)
        line = server.lines[self.rng.choice(list(server.lines))]
        change = self.rng.choice(("online", "reg", "quota", "restore"))
        if change == "online":
            line.online = not line.online
        elif change == "reg":
            line.reg = "LOGOUT" if line.reg == "LOGIN" else "LOGIN"
        elif change == "quota":
            line.day_remain_sms = 0
        else:
            server.restore_line(line.line_id)
        log.info("sim_churn", server=server.name, line=line.line_id, change=change)
        return {"server": server.name, "line": line.line_id, "change": change}

    def start_churn(self, interval: float) -> None:
        self.stop_churn()
        self.churn_interval = interval
        if interval > 0:
            self._churn = self.spawn(self._churn_loop(interval))

    def stop_churn(self) -> None:
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None

    async def _churn_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.churn_step()

    async def close(self) -> None:
        self.stop_churn()
        await self._background.close()


# --- HTTP: the vendor API -----------------------------------------------------------------------

FLEET_KEY: Final = web.AppKey("goipd_sim_fleet", SimFleet)


async def goip_api(request: web.Request) -> web.StreamResponse:
    fleet = request.app[FLEET_KEY]
    server = fleet.servers.get(request.match_info["server"])
    api = request.match_info["api"]
    if server is None or api not in APIS:
        raise web.HTTPNotFound()
    server.counters[f"requests_{api}"] += 1
    if api == "querylines":
        server.polled_at.append(time.time())
    mode = server.fault.mode
    early = await fault_response(request, server.fault, html_page=HTML_ERROR_PAGE)
    if early is not None:
        return early
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.Response(status=400, text="400 Bad Request", content_type="text/html")
    if mode == "wrong_auth" or not server.check_auth(body):
        return web.Response(status=401, text="401 Unauthorized", content_type="text/html")
    reply: Any
    if api == "querylines":
        reply = server.query_lines()
    elif api == "querysms":
        reply = server.query_sms(body.get("taskID", ""))
    else:
        reply = server.send_sms(
            body.get("number"), body.get("content"), body.get("provider"), body.get("goip_line")
        )
    text, content_type = server.encode(reply)
    if mode == "truncated_json":
        # The request was handled (a sendsms really was accepted); only the reply is cut.
        text = text[: len(text) // 2]
    return web.Response(text=text, content_type=content_type, charset="utf-8")


# --- HTTP: the control API ----------------------------------------------------------------------


def _server(request: web.Request) -> SimServer:
    return request.app[FLEET_KEY].server(request.match_info["server"])


async def control_servers(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[FLEET_KEY].servers))


async def control_add_server(request: web.Request) -> web.Response:
    server = request.app[FLEET_KEY].add_server(await json_body(request))
    return web.json_response(server.state(), status=201)


async def control_server(request: web.Request) -> web.Response:
    return web.json_response(_server(request).state())


async def control_delete_server(request: web.Request) -> web.Response:
    server = request.app[FLEET_KEY].remove_server(request.match_info["server"])
    return web.json_response({"deleted": server.name})


async def control_add_line(request: web.Request) -> web.Response:
    line = _server(request).add_line(await json_body(request))
    return web.json_response(line.state(), status=201)


async def control_patch_line(request: web.Request) -> web.Response:
    line = _server(request).set_line(request.match_info["line"], **await json_body(request))
    return web.json_response(line.state())


async def control_delete_line(request: web.Request) -> web.Response:
    line = _server(request).remove_line(request.match_info["line"])
    return web.json_response({"deleted": line.line_id})


async def control_fault(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request)
    fault = server.set_fault(str(body.get("mode", "none")), body.get("delay"))
    return web.json_response(asdict(fault))


async def control_push(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request, ("status_url", "inbound_url", "drop_reports"), kind="push")
    drop = body.get("drop_reports")
    if drop is not None and not isinstance(drop, bool):
        raise SimError("drop_reports must be true or false")
    return web.json_response(
        server.set_push(body.get("status_url", UNSET), body.get("inbound_url", UNSET), drop)
    )


async def control_inbound(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request)
    goip_line, from_number, content = (body.get(k) for k in ("goip_line", "from_number", "content"))
    if not all(isinstance(v, str) and v for v in (goip_line, from_number, content)):
        raise SimError("goip_line, from_number and content must be non-empty strings")
    recv_time = body.get("recv_time")
    if recv_time is not None and not isinstance(recv_time, str):
        raise SimError("recv_time must be a string 'YYYY-MM-DD hh:mm:ss'")
    outcome = await server.push_inbound(
        str(goip_line), str(from_number), str(content), recv_time=recv_time
    )
    return web.json_response(outcome)


async def control_sent(request: web.Request) -> web.Response:
    return web.json_response(_server(request).sent)


async def control_polls(request: web.Request) -> web.Response:
    return web.json_response(list(_server(request).polled_at))


async def control_churn(request: web.Request) -> web.Response:
    fleet = request.app[FLEET_KEY]
    body = await json_body(request)
    fleet.start_churn(seconds(body.get("interval", 0.0), "interval"))
    return web.json_response({"interval": fleet.churn_interval})


def build_app(fleet: SimFleet) -> web.Application:
    # 9,999 recipients plus content fit easily; anything larger is a mistake.
    app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[control_errors])
    app[FLEET_KEY] = fleet

    async def churn_ctx(_app: web.Application) -> AsyncIterator[None]:
        if fleet.churn_interval > 0:
            fleet.start_churn(fleet.churn_interval)
        yield
        await fleet.close()

    app.cleanup_ctx.append(churn_ctx)
    r = app.router
    r.add_get("/_control/servers", control_servers)
    r.add_post("/_control/servers", control_add_server)
    r.add_get("/_control/servers/{server}", control_server)
    r.add_delete("/_control/servers/{server}", control_delete_server)
    r.add_post("/_control/servers/{server}/lines", control_add_line)
    r.add_patch("/_control/servers/{server}/lines/{line}", control_patch_line)
    r.add_delete("/_control/servers/{server}/lines/{line}", control_delete_line)
    r.add_put("/_control/servers/{server}/fault", control_fault)
    r.add_put("/_control/servers/{server}/push", control_push)
    r.add_post("/_control/servers/{server}/inbound", control_inbound)
    r.add_get("/_control/servers/{server}/sent", control_sent)
    r.add_get("/_control/servers/{server}/polls", control_polls)
    r.add_put("/_control/churn", control_churn)
    # One dynamic route for every server: a dict lookup per request, however large the fleet.
    # The trailing slash is part of the vendor URL; without it the real server answers 404.
    r.add_post("/{server}/goip/{api}/", goip_api)
    return app


# --- running it ---------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RunningSimulator:
    fleet: SimFleet
    runner: web.AppRunner
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def base_url(self, server: str) -> str:
        """What goipd's config calls the server's `url`."""
        return f"{self.url}/{server}"

    async def stop(self) -> None:
        await self.runner.cleanup()
        # Normally done by the app's cleanup; repeated here in case the app never started.
        await self.fleet.close()


async def start_simulator(
    fleet: SimFleet, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    if not is_loopback(host):
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")
    runner, bound = await serve(build_app(fleet), host, port, backlog=1024)
    return RunningSimulator(fleet, runner, bound, host)


# --- fleets for the demo and benchmarks ---------------------------------------------------------


def demo_spec(status_push_base: str | None, seed: int = 7) -> dict[str, Any]:
    """Three SMS Servers (8, 16 and 32 lines) with a few sick lines, as a rack really looks.

    Which lines are sick is drawn from `seed`, always sparing each server's first two lines so
    the demo can send from the start.
    """
    rng = random.Random(seed)
    layout: list[tuple[str, int, int, list[str], dict[str, int]]] = [
        (
            "taipei",
            1,
            8,
            ["Chunghwa", "FarEasTone"],
            {"logout": 1, "offline": 1, "day0": 1, "finite": 2},
        ),
        (
            "kaohsiung",
            2,
            16,
            ["Chunghwa", "FarEasTone", "Taiwan Mobile"],
            {"logout": 1, "noreg": 1, "offline": 1, "day0": 1, "finite": 3},
        ),
        (
            "shenzhen",
            3,
            32,
            ["移动", "联通"],
            {"logout": 2, "noreg": 1, "offline": 2, "finite": 4, "fail": 1},
        ),
    ]
    servers = []
    for name, prefix, count, providers, sick in layout:
        lines: list[dict[str, Any]] = [
            {"line_id": f"G{prefix}{index + 1:02d}", "provider": providers[index % len(providers)]}
            for index in range(count)
        ]
        spare = list(range(2, count))
        rng.shuffle(spare)
        for role, how_many in sick.items():
            for _ in range(how_many):
                line = lines[spare.pop()]
                if role == "logout":
                    line["reg"] = "LOGOUT"  # a dead SIM: the module is up, the SIM is not
                elif role == "noreg":
                    line["reg"] = ""  # never registered
                elif role == "offline":
                    line.update(online=False, reg="")
                elif role == "day0":
                    line.update(remain_sms=rng.randrange(300, 900), day_remain_sms=0)
                elif role == "finite":
                    line.update(
                        remain_sms=rng.randrange(200, 1000), day_remain_sms=rng.randrange(20, 100)
                    )
                else:
                    line["fail_code"] = "331"  # no network service: every send fails
        server: dict[str, Any] = {
            "name": name,
            "username": "root",
            "password": f"demo-{name}",
            "lines": lines,
            "send_delay": 1.0,
            "receipt_delay": 2.0,
        }
        if status_push_base:
            base = status_push_base.rstrip("/")
            server["status_push_url"] = f"{base}/hooks/goip/{name}/status?token=demo-hook-{name}"
            server["inbound_push_url"] = f"{base}/hooks/goip/{name}/inbound?token=demo-hook-{name}"
        servers.append(server)
    return {"servers": servers}


def synthetic_spec(servers: int, lines_per_server: int, send_delay: float = 0.0) -> dict[str, Any]:
    """A large uniform fleet for benchmarks: s0001.., lines G101.., all registered, no limits."""
    return {
        "servers": [
            {
                "name": f"s{index + 1:04d}",
                "username": "root",
                "password": f"pw-s{index + 1:04d}",
                "send_delay": send_delay,
                "lines": [{"line_id": f"G{101 + line}"} for line in range(lines_per_server)],
            }
            for index in range(servers)
        ]
    }
