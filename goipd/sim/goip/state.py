"""What one simulated SMS Server holds (its settings, lines, tasks and the bookkeeping of
sends in flight), the settings' checks, and the profiles it can answer in.

A server answers in one of two profiles:

* `document`: the way the vendor document (the vendor's JSON API document) shows, quirks
  included: every value a string, arrays ending in `},\\n]`, replies labelled `text/html`.
* `v1.28.4`: the way the vendor's SMS Server v1.28.4 really answers (its PHP on MySQL, and its
  engine): json_encode replies, the text put unescaped into SQL (`Bad query: ...`, `\\n`
  rewritten, cut at an emoji: see goip_sql.py), quotas in SMS parts and never checked at
  accept, an engine that can be slow or dead, the missing-mbstring warning, `Could not connect`.

`SimServer` (server.py) is built on `ServerState` in layers: sending.py adds the lines' sends
and v1.28.4's engine, php.py v1.28.4's PHP, server.py the document's API and the control side.
The web inbox (the `receive` table and its pages) is inbox.py's `Inbox`, one per server.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from goipd.sim.common import KEEP, Fault, SimError, seconds
from goipd.sim.goip.devices import SimDevice
from goipd.sim.goip.inbox import LAYOUTS, TIES, Inbox
from goipd.sim.goip.lines import SimLine, SubTask, live

if TYPE_CHECKING:
    from goipd.sim.goip.fleet import SimFleet
    from goipd.sim.goip.relay import RelaySlot

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
APIS: Final = frozenset({"sendsms", "querysms", "querylines"})
SERVER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class SimConflict(SimError):
    """The thing to add exists already; becomes HTTP 409."""

    status = 409


UNSET: Final = KEEP


PROFILE_KEYS: Final = frozenset(
    {
        "profile",
        "mbstring",
        "engine",
        "engine_delay",
        "keepalive_after",
        "session_time",
        "inbox_ties",
        "inbox_layout",
    }
)
"""Server settings of the v1.28.4 model (in a spec, in PATCH /_control/servers/{server})."""


def profile_value(key: str, value: Any) -> Any:
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
    elif key == "session_time":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SimError("session_time must be a whole number of minutes >= 1")
    elif key == "inbox_ties":
        if value not in TIES:
            raise SimError(f"inbox_ties must be one of {list(TIES)}")
    elif key == "inbox_layout":
        if value not in LAYOUTS:
            raise SimError(f"inbox_layout must be one of {list(LAYOUTS)}")
    else:
        raise SimError(f"unknown server field {key!r}")
    return value


@dataclass(eq=False)
class ServerState:
    """What a server holds; `SimServer` (server.py) adds, layer by layer, what it does."""

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
    session_time: int = 24
    """Minutes a web login (en/dologin.php) lasts: `system.session_time`."""
    inbox_ties: str = "shuffled"
    """The web inbox's rows of the same second: `shuffled` anew per request (as MySQL may
    return them) or `stable` (by id, for tests that need one order)."""
    inbox_layout: str = "v1.28.4"
    """The web inbox's HTML: `v1.28.4`, or `changed` (restructured, as by a vendor update)."""
    inbox: Inbox = field(init=False, repr=False)
    """The `receive` table and the web pages that list it (inbox.py)."""
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
    _last_row_id: int = field(default=0, init=False, repr=False)
    """Row ids are never reused: a line deleted and added again is a new `goip` row."""
    ussd_delay: float = 1.0
    """en/ussd.php: how long a line takes to bring the carrier's answer (relay.py)."""
    ussd_timeout: float = 120.0
    """en/ussd.php: how long it waits for a line that never answers (2 x 60 s)."""
    command_timeout: float = 30.0
    """api.php: how long it waits for a device that never answers (6 x 5 s)."""
    reboot_time: float = 30.0
    """How long a rebooted module (or device) stays offline."""
    devices: dict[str, SimDevice] = field(default_factory=dict)
    """The GoIP devices its lines are on, by name (devices.py)."""
    ussd_log: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=10_000), init=False, repr=False
    )
    """Every en/ussd.php request that reached the engine, and its reply."""
    command_log: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=10_000), init=False, repr=False
    )
    """Every api.php command that reached the engine, and its reply."""
    _relay_slots: dict[int, RelaySlot] = field(default_factory=dict, init=False, repr=False)
    """The engine's relay ids of USSD sessions under way."""
    _reboots: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False, repr=False)
    """Per line, the reboot that brings it back."""

    def __post_init__(self) -> None:
        if not SERVER_NAME.match(self.name) or self.name.startswith("_"):
            raise SimError(f"bad server name {self.name!r}: use [A-Za-z0-9_.-], no leading '_'")
        if self.fault.mode not in FAULT_MODES:
            raise SimError(f"fault mode must be one of {list(FAULT_MODES)}")
        profile_value("profile", self.profile)
        profile_value("engine", self.engine)
        self.inbox = Inbox(self.name)
        if self.engine == "dead":
            # Born with a dead engine: the database shows the lines as they were.
            self._frozen = {line.line_id: live(line) for line in self.lines.values()}
        for line_id, line in self.lines.items():
            if line_id != line.line_id:
                raise SimError(f"line key {line_id!r} differs from its line_id {line.line_id!r}")
            self._queue.append(line_id)
            self._baseline[line_id] = replace(line)

    def _require_fleet(self) -> SimFleet:
        if self._fleet is None:
            raise RuntimeError(f"server {self.name} is not part of a SimFleet")
        return self._fleet
