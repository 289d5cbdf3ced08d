"""A simulated GoIP SMS Server fleet: many servers on one port, told apart by a path prefix.

Server `hq` answers at `http://HOST:PORT/hq/goip/<api>/` in one of two profiles:

* `document`: the way the vendor document (the vendor's JSON API document) shows, quirks
  included: every value a string, arrays ending in `},\\n]`, replies labelled `text/html`.
* `v1.28.4`: the way the vendor's SMS Server v1.28.4 really answers (its PHP on MySQL, and its
  engine): json_encode replies, the text put unescaped into SQL (`Bad query: ...`, `\\n`
  rewritten, cut at an emoji: see goip_sql.py), quotas in SMS parts and never checked at
  accept, an engine that can be slow or dead, the missing-mbstring warning, `Could not connect`.

It pushes send results and inbound SMS to configured URLs and can be told to misbehave (faults,
dropped reports, line churn). Tests, the demo and the benchmarks drive it through its control
API under `/_control/` (no auth: it only ever listens on loopback) or, in-process, through the
same methods on `SimFleet`/`SimServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
from goipd.sim.goip_sql import (
    BadQuery,
    PhpFatal,
    mysql_ci_key,
    mysql_number,
    php_empty,
    php_json_decode,
    php_json_encode,
    php_prop,
    php_string,
    run_statement,
    sms_parts,
    stored_text,
    varchar,
)

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
    "db_down",
)
PROFILE_V1284: Final = "v1.28.4"
"""What the vendor's SMS Server v1.28.4 really does (its PHP, its MySQL, its engine)."""
PROFILE_DOCUMENT: Final = "document"
"""What the vendor's JSON API document shows."""
PROFILES: Final = (PROFILE_V1284, PROFILE_DOCUMENT)
DEFAULT_PROFILE: Final = PROFILE_V1284
ENGINES: Final = ("running", "slow", "dead")
"""The SMS Server's engine (goipcron): sends the queued recipients, keeps lines' state fresh."""
REG_STATES: Final = ("LOGIN", "LOGOUT", "")
APIS: Final = frozenset({"sendsms", "querysms", "querylines"})
MAX_NUMBERS: Final = 9999
LINE_LOST_CODE: Final = "331"
"""err_code when the assigned line stopped being usable before its turn came ("no network
service"): goipd classes it as a line fault and retries elsewhere, which is what it should do."""
NO_LINE_CODE: Final = "302"
"""err_code for a recipient no line had quota left for ("operation not allowed")."""
DEVICE_MAX_BYTES: Final = 3000
"""A GoIP takes at most this much UTF-8 text per send command (public `styryl/goip`)."""
TOO_LONG_CODE: Final = "500"
"""err_code for a text the device refuses as too long. An assumption: what a real GoIP answers
is not known; "500" is the vendor's "unknown error". goipd never sends such texts through GoIP."""
SENDS_BATCH: Final = 2000
"""The PHP inserts the recipients' rows 2000 per statement."""
TASK_MAX_AGE: Final = 24 * 3600.0
"""The engine abandons recipients still unsent after this long (seconds)."""
ENGINE_TICK: Final = 1.0
"""While recipients wait (for quota, a line, a delay), the engine looks again this often."""
DB_DOWN_TEXT: Final = "Could not connect"
MBSTRING_WARNING: Final = "Warning: need install php-mbstring module<br>"
PHP_USER_ID: Final = "1"
"""The id of the SMS Server's only user (root) in its `user` table."""
PHP_HEADERS: Final = {"content": "application/json;chartset=uft-8"}
"""The (misspelt, misnamed) header the PHP sends after a password login."""
SQL_USER: Final = "SELECT id,permissions FROM user WHERE username='{}' and password='{}' "
SQL_IP_LOOKUP: Final = (
    "SELECT user_id FROM token WHERE ip='{}' and token='{}' and insert_time > NOW()-INTERVAL 1 HOUR"
)
SQL_LINE: Final = "select id from goip where name='{}' and gsm_status='LOGIN'"
SQL_PROVIDER: Final = "select * from prov where prov='{}'"
SQL_PROVIDER_LINE: Final = "select id from goip where provider='{}' and gsm_status='LOGIN'"
SQL_MESSAGE: Final = (
    "INSERT INTO message (type,msg,userid,tel,prov,goipid,total) "
    "VALUES (100, '{}','{}','{}','{}','{}','{}')"
)
SQL_SENDS: Final = "insert into sends (messageid,userid,telnum,provider,total) values"
SQL_QUERYSMS_HEAD: Final = "select * from sends left join goip on goip.id=goipid "
SQL_QUERYSMS_TAIL: Final = " order by sends.id"
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
        "profile",
        "mbstring",
        "engine",
        "engine_delay",
        "keepalive_after",
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
    num: str = ""
    """The SIM's own number; the v1.28.4 profile lists it in querylines (as some builds do)."""

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
    elif key in ("provider", "num"):
        if not isinstance(value, str):
            raise SimError(f"{key} must be a string")
    elif key == "fail_code":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is not None and (not isinstance(value, str) or not value):
            raise SimError("fail_code must be a CMS code string or null")
    else:
        raise SimError(f"unknown line field {key!r}")
    return value


PROFILE_KEYS: Final = frozenset(
    {"profile", "mbstring", "engine", "engine_delay", "keepalive_after"}
)
"""Server settings of the v1.28.4 model (in a spec, in PATCH /_control/servers/{server})."""


def _profile_value(key: str, value: Any) -> Any:
    if key == "profile":
        if value not in PROFILES:
            raise SimError(f"profile must be one of {list(PROFILES)}")
    elif key == "engine":
        if value not in ENGINES:
            raise SimError(f"engine must be one of {list(ENGINES)}")
    elif key == "mbstring":
        if not isinstance(value, bool):
            raise SimError("mbstring must be true or false")
    elif key in ("engine_delay", "keepalive_after"):
        return seconds(value, key)
    else:
        raise SimError(f"unknown server field {key!r}")
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
    parts: int = 1
    """SMS parts it takes off a line's quotas (the v1.28.4 profile counts them; else 1)."""
    stored: bool = False
    """A `sends` row of the v1.28.4 profile: the engine gives it a line when it sends it, so
    `goip_line` is None until then."""
    send_time: str = ""
    """v1.28.4: the row's `time` column (when it was stored), querysms' `sendTime`."""
    stored_at: float = 0.0
    """v1.28.4: when it was stored (monotonic); the engine gives up on it after a day."""
    ready_at: float = 0.0
    """v1.28.4: the engine does not look at it before this (monotonic): a slow engine."""
    pin_line: str | None = None
    """v1.28.4: the line the task named (message.goipid): only that line may send it."""
    pin_provider: str | None = None
    """v1.28.4: the provider the task named (message.prov): only its lines may send it."""

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


@dataclass(frozen=True)
class PhpReply:
    """What v1.28.4's PHP answers: always `text/html`; 401 with an empty body."""

    status: int
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


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
    profile: str = DEFAULT_PROFILE
    """`document` (the vendor document) or `v1.28.4` (the real server: see `php_request`)."""
    mbstring: bool = True
    """v1.28.4: PHP has mbstring; without it every sendsms reply starts with a warning."""
    engine: str = "running"
    """v1.28.4: the engine is `running`, `slow` (answers sendsms late) or `dead`."""
    engine_delay: float = 15.0
    """v1.28.4: how long sendsms waits for a slow or dead engine before it ACCEPTs."""
    keepalive_after: float = 2.0
    """v1.28.4: after an engine restart, lines read offline this long (until a keepalive)."""
    _queue: list[str] = field(default_factory=list, init=False, repr=False)
    """Round-robin order of line ids: the doc's "a line that sent goes to the back"."""
    _pending: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    """Recipients assigned to a line but not yet sent; counted against its quota so one
    request cannot hand a line with 1 SMS left 50 recipients."""
    _outbox: dict[str, deque[SubTask]] = field(default_factory=dict, init=False, repr=False)
    _workers: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False, repr=False)
    _baseline: dict[str, SimLine] = field(default_factory=dict, init=False, repr=False)
    _fleet: SimFleet | None = field(default=None, init=False, repr=False)
    _unsent: list[SubTask] = field(default_factory=list, init=False, repr=False)
    """v1.28.4: stored recipients the engine has not given a line yet, oldest first."""
    _frozen: dict[str, tuple[bool, str]] | None = field(default=None, init=False, repr=False)
    """v1.28.4, engine dead: each line's (alive, gsm_status) as the engine last wrote it."""
    _keepalive_at: float = field(default=0.0, init=False, repr=False)
    """v1.28.4: after an engine restart, lines read offline until then (monotonic)."""
    _engine_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _engine_wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _row_ids: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    """v1.28.4: the numeric ids (goip.id, prov.id) lines and providers have in its SQL."""

    def __post_init__(self) -> None:
        if not SERVER_NAME.match(self.name) or self.name.startswith("_"):
            raise SimError(f"bad server name {self.name!r}: use [A-Za-z0-9_.-], no leading '_'")
        if self.fault.mode not in FAULT_MODES:
            raise SimError(f"fault mode must be one of {list(FAULT_MODES)}")
        _profile_value("profile", self.profile)
        _profile_value("engine", self.engine)
        if self.engine == "dead":
            # Born with a dead engine: the database shows the lines as they were.
            self._frozen = {line.line_id: _live(line) for line in self.lines.values()}
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
            **{key: _profile_value(key, spec[key]) for key in PROFILE_KEYS if key in spec},
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
        self._kick_engine()
        return line

    def add_line(self, line: SimLine | Mapping[str, Any]) -> SimLine:
        new = line if isinstance(line, SimLine) else SimLine.from_spec(line)
        if new.line_id in self.lines:
            raise SimConflict(f"line {new.line_id} exists")
        self.lines[new.line_id] = new
        self._queue.append(new.line_id)
        self._baseline[new.line_id] = replace(new)
        self._kick_engine()
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

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Changes any of `profile`, `mbstring`, `engine`, `engine_delay`, `keepalive_after`.

        Engine `dead` freezes what querylines shows and stops all sending; leaving `dead` is an
        engine restart: every line reads offline for `keepalive_after`, then whatever is still
        queued (and less than a day old) goes out.
        """
        unknown = set(changes) - PROFILE_KEYS
        if unknown:
            raise SimError(f"unknown server fields: {', '.join(sorted(unknown))}")
        checked = {key: _profile_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            if key == "engine":
                self._set_engine(value)
            else:
                setattr(self, key, value)
        log.info("sim_server_configured", server=self.name, **checked)
        self._kick_engine()
        return self.profile_state()

    def profile_state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in sorted(PROFILE_KEYS)}

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
        self._kick_engine()
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
                self._pending[chosen] += sub.parts
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
                self._pending[line_id] -= sub.parts
                if self._pending[line_id] <= 0:
                    del self._pending[line_id]
            # Looked up again: the line may have been deleted or changed during the send.
            line = self.lines.get(line_id)
            if sub.stored:
                self._device_send(sub, line)
            elif line is None or not line.usable:
                self._finish(sub, line, LINE_LOST_CODE)
            elif line.fail_code is not None:
                self._finish(sub, line, line.fail_code)
            else:
                _take_quota(line, sub.parts)
                self._finish(sub, line, None)
        self._outbox.pop(line_id, None)
        self._workers.pop(line_id, None)

    def _device_send(self, sub: SubTask, line: SimLine | None) -> None:
        """v1.28.4: the device sends what the engine handed it; the engine writes the result."""
        fits = len(sub.content.encode("utf-8", "surrogatepass")) <= DEVICE_MAX_BYTES
        can_send = line is not None and line.online and line.reg == "LOGIN"
        if self.engine == "dead":
            # The engine died with this one in flight: the phone gets it, nobody writes that
            # down, the row is `unsend` again and goes out once more after a restart (GoIP
            # reality §14, inferred from the engine binary).
            if line is not None and can_send and fits and line.fail_code is None:
                _take_quota(line, sub.parts)
                self._record_sent(sub, "succeeded", None)
            self._requeue(sub)
        elif line is None or not can_send:
            self._finish(sub, line, LINE_LOST_CODE)
        elif not fits:
            self._finish(sub, line, TOO_LONG_CODE)
        elif line.fail_code is not None:
            self._finish(sub, line, line.fail_code)
        elif not _has_quota(line, sub.parts):
            # The quota went while it waited on this line: the engine will look again.
            self._requeue(sub)
        else:
            _take_quota(line, sub.parts)
            self._finish(sub, line, None)

    def _requeue(self, sub: SubTask) -> None:
        sub.send, sub.goip_line = "unsend", None
        self._unsent.insert(0, sub)
        self._kick_engine()

    async def _fail_unassigned(self, sub: SubTask) -> None:
        await asyncio.sleep(self.send_delay)
        self._finish(sub, None, NO_LINE_CODE)

    def _finish(self, sub: SubTask, line: SimLine | None, err_code: str | None) -> None:
        sub.send = "failed" if err_code is not None else "succeeded"
        sub.err_code = err_code
        self.counters[f"sends_{sub.send}"] += 1
        self._record_sent(sub, sub.send, err_code)
        receipt = err_code is None and line is not None and line.receipt
        self._require_fleet().spawn(self._report(sub, receipt))

    def _record_sent(self, sub: SubTask, result: str, err_code: str | None) -> None:
        record: dict[str, Any] = {
            "task_id": sub.task_id,
            "sub_task_id": sub.sub_task_id,
            "number": sub.number,
            "content": sub.content,
            "goip_line": sub.goip_line,
            "result": result,
            "err_code": err_code,
            "at": time.time(),
        }
        if sub.stored:
            record["parts"] = sub.parts
        self.sent.append(record)

    async def _report(self, sub: SubTask, receipt: bool) -> None:
        fleet = self._require_fleet()
        # Snapshot now: the receipt below must not leak into the first report.
        first = fleet.spawn(self._push_report(fleet, self._report_body(sub), php=sub.stored))
        if receipt:
            await asyncio.sleep(self.receipt_delay)
            sub.receipt = True
            # The receipt report must not overtake the send report it follows.
            await first
            await self._push_report(fleet, self._report_body(sub), php=sub.stored)
        else:
            await first

    def _report_body(self, sub: SubTask) -> dict[str, Any]:
        return self._php_report(sub) if sub.stored else dict(sub.report())

    async def _push_report(self, fleet: SimFleet, body: dict[str, Any], *, php: bool) -> str:
        if self.drop_reports:
            self.counters["reports_dropped_on_purpose"] += 1
            return "dropped"
        return await fleet.push(self, self.status_push_url, body, kind="status", php=php)

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
        outcome = await self._require_fleet().push(
            self, self.inbound_push_url, body, "inbound", php=self.profile == PROFILE_V1284
        )
        return {"push": outcome, "report": body}

    # --- v1.28.4: the vendor's PHP, minus HTTP ---------------------------------------------

    async def php_request(
        self, api: str, data: Any, *, remote: str = "127.0.0.1", refuse_auth: bool = False
    ) -> PhpReply:
        """One API call answered as SMS Server v1.28.4's PHP answers it (`api_global.php`, then
        `sendsms/`, `querysms/` or `querylines/index.php`); `data` is the decoded body
        (`php_json_decode`: None when it was no JSON).

        A failing SQL statement ends the call with `Bad query: ...` and nothing after it
        happens. sendsms stores the task, then waits `engine_delay` for a slow or dead engine,
        then ACCEPTs. The document-profile methods (`send_sms`, `query_sms`, `query_lines`)
        stay as they are.
        """
        if api not in APIS:
            raise LookupError(f"no API {api}")
        out: list[str] = []
        headers: dict[str, str] = {}
        try:
            user = None if refuse_auth else self._php_auth(data, remote)
            if user is None:
                return PhpReply(401, "")
            headers = dict(PHP_HEADERS)
            if api == "querylines":
                out.append(self._php_querylines())
            elif api == "querysms":
                out.append(self._php_querysms(data))
            else:
                task_id = self._php_sendsms(data, user, out)
                if task_id is not None:
                    await self._engine_answer()
                    out.append(php_json_encode({"result": "ACCEPT", "taskID": task_id}))
                    self.counters["tasks_accepted"] += 1
        except BadQuery as exc:
            self.counters["bad_query"] += 1
            log.info("sim_bad_query", server=self.name, api=api, error=exc.error)
            out.append(exc.reply)
        except PhpFatal:
            # PHP 5 with display_errors off: a 500, unless output had started (the warning).
            self.counters["php_fatal"] += 1
            if not out:
                return PhpReply(500, "", headers)
        return PhpReply(200, "".join(out), headers)

    def _php_auth(self, data: Any, remote: str) -> str | None:
        """api_global.php: the user's id, or None (401). The user name goes into SQL as posted."""
        auth = php_prop(data, "auth")
        username, password = php_prop(auth, "username"), php_prop(auth, "password")
        if not (php_empty(auth) or php_empty(username) or php_empty(password)):
            digest = _md5(password)
            name, _ = run_statement(SQL_USER, [php_string(username), digest])
            known = mysql_ci_key(name) == mysql_ci_key(self.username)
            return PHP_USER_ID if known and digest == _md5(self.password) else None
        token = php_prop(data, "token")
        if not php_empty(token):
            # The simulator issues no tokens (there is no doauth here): the lookup finds none.
            run_statement(SQL_IP_LOOKUP, [remote, php_string(token)])
        return None

    def _php_querylines(self) -> str:
        """`select * from goip order by name`: every value a string as MySQL returns it, online
        and reg as the engine last wrote them."""
        rows: list[dict[str, str]] = []
        for line in sorted(self.lines.values(), key=lambda line: mysql_ci_key(line.line_id)):
            alive, status = self._db_line(line)
            row = {
                "goip_line": line.line_id,
                "online": "1" if alive else "0",
                "reg": status,
                "remain_sms": str(line.remain_sms),
                "day_remain_sms": str(line.day_remain_sms),
            }
            if line.num:
                row["num"] = line.num
            rows.append(row)
        return php_json_encode(rows)

    def _php_querysms(self, data: Any) -> str:
        """`sends LEFT JOIN goip` for `<messageid>[.<telnum>]`; an unknown task is `[]`."""
        raw = php_prop(data, "taskID")
        if php_empty(raw):
            return "[]"
        ids = php_string(raw).split(".")
        where, values = " where messageid='{}'", [ids[0]]
        number = ids[1] if len(ids) > 1 else None
        if not php_empty(number):
            where += " and telnum='{}'"
            values.append(str(number))
        parsed = run_statement(SQL_QUERYSMS_HEAD + where + SQL_QUERYSMS_TAIL, values)
        message_id = mysql_number(parsed[0])
        subs: list[SubTask] = []
        if message_id.is_integer() and message_id > 0:
            subs = self.tasks.get(str(int(message_id)), [])
        if len(parsed) > 1:
            key = mysql_ci_key(parsed[1])
            subs = [sub for sub in subs if mysql_ci_key(sub.number) == key]
        return php_json_encode([self._php_report(sub) for sub in subs])

    def _php_report(self, sub: SubTask) -> dict[str, Any]:
        """A querysms element, also the status push body (send_json.php builds it alike)."""
        body: dict[str, Any] = {
            "taskID": sub.sub_task_id,
            # LEFT JOIN goip: null until the engine gave it a line, or once that line is gone.
            "goip_line": sub.goip_line if sub.goip_line in self.lines else None,
            "sendTime": sub.send_time or None,
            "send": sub.send,
        }
        if sub.send == "failed":
            body["err_code"] = sub.err_code
        if sub.receipt:
            body["receipt"] = 1
        return body

    def _php_sendsms(self, data: Any, user: str, out: list[str]) -> str | None:
        """sendsms/index.php up to its engine wait: the stored task's id, or None when it
        answered already (REJECT, into `out`). Raises BadQuery where a statement fails; the
        rows stored before it stay."""
        content, number = php_prop(data, "content"), php_prop(data, "number")
        goip_line, provider = php_prop(data, "goip_line"), php_prop(data, "provider")
        parts = sms_parts(_php_text(content), self.mbstring)
        if not self.mbstring:
            out.append(MBSTRING_WARNING)
        if php_empty(content) or php_empty(number):
            self._php_reject(out, "content or number error")
            return None
        prov_id = goip_id = ""
        pin_line = pin_provider = None
        if not php_empty(goip_line):
            (name,) = run_statement(SQL_LINE, [php_string(goip_line)])
            line = self._db_find_line(name)
            if line is None:
                self._php_reject(out, "none_line")
                return None
            pin_line, goip_id = line.line_id, str(self._row_id("goip", line.line_id))
        elif not php_empty(provider):
            (name,) = run_statement(SQL_PROVIDER, [php_string(provider)])
            key = mysql_ci_key(name)
            pin_provider = next(
                (ln.provider for ln in self.lines.values() if mysql_ci_key(ln.provider) == key),
                None,
            )
            if pin_provider is None:
                self._php_reject(out, "none_provider")
                return None
            prov_id = str(self._row_id("prov", pin_provider))
            run_statement(SQL_PROVIDER_LINE, [prov_id])
            if not any(
                ln.provider == pin_provider and self._db_line(ln)[1] == "LOGIN"
                for ln in self.lines.values()
            ):
                self._php_reject(out, "none_line")
                return None
        elif not any(self._db_line(ln)[1] == "LOGIN" for ln in self.lines.values()):
            self._php_reject(out, "none_line")
            return None
        numbers = php_string(number)
        message = run_statement(
            SQL_MESSAGE, [php_string(content), user, numbers, prov_id, goip_id, str(parts)]
        )
        text = stored_text(message[0])
        self.next_task_id += 1
        task_id = str(self.next_task_id)
        rows: list[SubTask] = []
        self.tasks[task_id] = rows
        self.counters["tasks_stored"] += 1
        now, stamp = time.monotonic(), datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        ready = now + (self.engine_delay if self.engine == "slow" else 0.0)
        mobiles = list(dict.fromkeys(numbers.split(",")))  # explode + array_unique
        try:
            for start in range(0, len(mobiles), SENDS_BATCH):
                batch = mobiles[start : start + SENDS_BATCH]
                row = f"({task_id},'{{}}','{{}}','{{}}','{{}}'),"
                # PHP 5 "removes" the last comma by writing "" into it: a NUL byte.
                statement = SQL_SENDS + (row * len(batch))[:-1] + "\0"
                values = [value for tel in batch for value in (user, tel, prov_id, str(parts))]
                parsed = run_statement(statement, values)
                for index in range(len(batch)):
                    sub = SubTask(
                        task_id,
                        varchar(parsed[4 * index + 1], 20),  # sends.telnum varchar(20)
                        text,
                        None,
                        parts=parts,
                        stored=True,
                        send_time=stamp,
                        stored_at=now,
                        ready_at=ready,
                        pin_line=pin_line,
                        pin_provider=pin_provider,
                    )
                    rows.append(sub)
                    self._unsent.append(sub)
                self.counters["recipients_stored"] += len(batch)
        finally:
            self._kick_engine()
        log.debug("sim_task_stored", server=self.name, task=task_id, recipients=len(rows))
        return task_id

    def _php_reject(self, out: list[str], reason: str) -> None:
        self.counters[f"rejected_{reason.replace(' ', '_')}"] += 1
        out.append(php_json_encode({"result": "REJECT", "reason": reason}))

    def _db_line(self, line: SimLine) -> tuple[bool, str]:
        """The line's (alive, gsm_status) in the database: only the engine writes them."""
        if self._frozen is not None:
            return self._frozen.get(line.line_id, (False, ""))
        if time.monotonic() < self._keepalive_at:
            return False, ""
        return _live(line)

    def _db_find_line(self, name: str) -> SimLine | None:
        key = mysql_ci_key(name)
        return next(
            (
                line
                for line in self.lines.values()
                if mysql_ci_key(line.line_id) == key and self._db_line(line)[1] == "LOGIN"
            ),
            None,
        )

    def _row_id(self, table: str, name: str) -> int:
        return self._row_ids.setdefault(f"{table}:{name}", len(self._row_ids) + 1)

    def stored_tasks(self) -> list[dict[str, Any]]:
        """Every recipient row ever stored (v1.28.4 `sends` rows and document sub-tasks)."""
        return [
            {
                "task_id": sub.task_id,
                "sub_task_id": sub.sub_task_id,
                "number": sub.number,
                "content": sub.content,
                "state": sub.send,
                "goip_line": sub.goip_line,
                "parts": sub.parts,
            }
            for subs in self.tasks.values()
            for sub in subs
        ]

    # --- v1.28.4: the engine ------------------------------------------------------------------

    async def _engine_answer(self) -> None:
        """do_cron: `CRON2` to the engine, then up to 3 × 5 s for its `OK`; ACCEPT either way."""
        if self.engine != "running":
            await asyncio.sleep(self.engine_delay)

    def _set_engine(self, engine: str) -> None:
        if engine == self.engine:
            return
        if engine == "dead":
            self._frozen = {line.line_id: self._db_line(line) for line in self.lines.values()}
            self._recall()
        elif self.engine == "dead":
            # A restart: lines read offline until their next keepalive.
            self._frozen = None
            self._keepalive_at = time.monotonic() + self.keepalive_after
            self.counters["engine_restarts"] += 1
        self.engine = engine

    def _recall(self) -> None:
        """A dying engine forgets what it had handed to lines but not yet sent."""
        recalled: list[SubTask] = []
        for line_id, outbox in self._outbox.items():
            back = [sub for sub in outbox if sub.stored]
            if not back:
                continue
            kept = [sub for sub in outbox if not sub.stored]
            outbox.clear()
            outbox.extend(kept)
            for sub in back:
                self._pending[line_id] -= sub.parts
                sub.send, sub.goip_line = "unsend", None
            if self._pending[line_id] <= 0:
                del self._pending[line_id]
            recalled.extend(back)
        self._unsent[:0] = recalled

    def _kick_engine(self) -> None:
        if not self._unsent or self._fleet is None:
            return
        self._engine_wake.set()
        if self._engine_task is None or self._engine_task.done():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # in-process use without a loop: the next request starts it
            self._engine_task = self._fleet.spawn(self._engine_loop())

    async def _engine_loop(self) -> None:
        """The engine gives each stored recipient, oldest first, a line that may send it."""
        while self._unsent:
            self._engine_wake.clear()
            wait = self._engine_dispatch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._engine_wake.wait(), wait)

    def _engine_dispatch(self) -> float | None:
        """One pass over the queue; how long to sleep before the next (None: until woken)."""
        if self.engine == "dead":
            return None
        now = time.monotonic()
        if now < self._keepalive_at:
            return self._keepalive_at - now
        wait = ENGINE_TICK
        waiting: list[SubTask] = []
        for sub in self._unsent:
            if now - sub.stored_at > TASK_MAX_AGE:
                self.counters["recipients_abandoned"] += 1
            elif sub.ready_at > now:
                wait = min(wait, sub.ready_at - now)
                waiting.append(sub)
            elif (line_id := self._engine_pick(sub)) is None:
                waiting.append(sub)
            else:
                self._engine_assign(sub, line_id)
        self._unsent = waiting
        return wait

    def _engine_pick(self, sub: SubTask) -> str | None:
        """The task's line, else the next line (round robin) of its provider or of any: one
        the engine sees as LOGIN with quota for all of the text's parts."""
        candidates = [sub.pin_line] if sub.pin_line is not None else list(self._queue)
        for line_id in candidates:
            line = self.lines.get(line_id)
            if line is None or (sub.pin_provider is not None and line.provider != sub.pin_provider):
                continue
            if self._db_line(line) != (True, "LOGIN") or not _has_quota(
                line, sub.parts, self._pending[line_id]
            ):
                continue
            if line_id in self._queue:
                self._queue.remove(line_id)
                self._queue.append(line_id)
            return line_id
        return None

    def _engine_assign(self, sub: SubTask, line_id: str) -> None:
        sub.goip_line = line_id
        self._pending[line_id] += sub.parts
        self._outbox.setdefault(line_id, deque()).append(sub)
        worker = self._workers.get(line_id)
        if worker is None or worker.done():
            self._workers[line_id] = self._require_fleet().spawn(self._line_worker(line_id))

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
            "unsent": len(self._unsent),
            "counters": dict(self.counters),
            **self.profile_state(),
        }

    def _require_fleet(self) -> SimFleet:
        if self._fleet is None:
            raise RuntimeError(f"server {self.name} is not part of a SimFleet")
        return self._fleet


def _live(line: SimLine) -> tuple[bool, str]:
    """(alive, gsm_status) as a running engine writes them for the device's state."""
    return (True, line.reg) if line.online else (False, "")


def _has_quota(line: SimLine, parts: int, pending: int = 0) -> bool:
    """Both quotas (-1: none) leave room for `parts` more beyond the `pending` ones."""
    return all(
        quota < 0 or quota - pending >= parts for quota in (line.remain_sms, line.day_remain_sms)
    )


def _take_quota(line: SimLine, parts: int) -> None:
    if line.remain_sms > 0:
        line.remain_sms = max(0, line.remain_sms - parts)
    if line.day_remain_sms > 0:
        line.day_remain_sms = max(0, line.day_remain_sms - parts)


def _php_text(value: Any) -> str:
    """The text get_count_from_sms measures (strlen of a non-string is null: 1 part)."""
    try:
        return php_string(value) if isinstance(value, str | int | float) else ""
    except PhpFatal:
        return ""


def _md5(value: Any) -> str:
    """PHP's md5() of a posted password (of a JSON object: null, so '')."""
    try:
        text = php_string(value)
    except PhpFatal:
        return ""
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


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
        self,
        server: SimServer,
        url: str | None,
        body: Mapping[str, Any],
        kind: str,
        *,
        php: bool = False,
    ) -> str:
        """POST one JSON report; retry a few times, then drop it as a real server would.

        `php`: as v1.28.4's `send_json.php` does it: PHP's json_encode, one try (a curl POST
        without retry; the answer is ignored).
        """
        if url is None:
            return "no_url"
        if php:
            data = php_json_encode(dict(body)).encode()
            headers = {"Content-Type": "application/json; charset=utf-8"}
        else:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json"}
        attempts = 1 if php else self.push_attempts
        outcome, attempt = await self._background.push(
            "POST",
            url,
            session_timeout=self.push_timeout,
            attempts=attempts,
            backoff=self.push_backoff,
            data=data,
            headers=headers,
        )
        if outcome == "ok":
            server.counters[f"push_{kind}_ok"] += 1
            log.info(
                "report_pushed",
                server=server.name,
                kind=kind,
                task=body.get("taskID"),
                send=body.get("send"),
                receipt=body.get("receipt") in ("1", 1),
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
            attempts=attempts,
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
    if mode == "db_down":
        # inc/conn.inc.php dies in the database constructor, before auth and before the body.
        return web.Response(text=DB_DOWN_TEXT, content_type="text/html", charset="utf-8")
    if server.profile == PROFILE_V1284:
        php = await server.php_request(
            api,
            php_json_decode(await request.read()),
            remote=request.remote or "",
            refuse_auth=mode == "wrong_auth",
        )
        text = php.text
        if mode == "truncated_json":
            text = text[: len(text) // 2]
        return web.Response(
            status=php.status,
            text=text,
            content_type="text/html",
            charset="utf-8",
            headers=php.headers,
        )
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


async def control_patch_server(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request, PROFILE_KEYS, kind="server")
    return web.json_response(server.configure(**body))


async def control_tasks(request: web.Request) -> web.Response:
    return web.json_response(_server(request).stored_tasks())


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
    r.add_patch("/_control/servers/{server}", control_patch_server)
    r.add_delete("/_control/servers/{server}", control_delete_server)
    r.add_get("/_control/servers/{server}/tasks", control_tasks)
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
