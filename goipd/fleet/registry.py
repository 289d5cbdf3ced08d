"""The line registry: what goipd knows about every SMS Server and every line, and what changed.

Only the poller writes poll results here; routing and the API read. Every transition is logged
as exactly one structlog event so operators can grep a line's history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from goipd.ledger.shared import AutoQuarantine
from goipd.ledger.upkeep import LineBalance, Remediation
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import MBSTRING_MISSING, LineStatus, setup_problem

if TYPE_CHECKING:
    from goipd.fleet.devices import DeviceLine

log = structlog.get_logger("goipd.fleet")


class LineState(StrEnum):
    """One word per line for humans, dashboards and the status page, most severe first."""

    GONE = "gone"
    OFFLINE = "offline"
    LOGGED_OUT = "logged_out"
    QUOTA_EXHAUSTED = "quota_exhausted"
    REGISTERED = "registered"


@dataclass(frozen=True, slots=True)
class ManualQuarantine:
    reason: str | None
    since: float


@dataclass(slots=True)
class Line:
    server: str
    line_id: str
    online: bool
    registered: bool
    reg_raw: str
    remain_sms: int | None
    day_remain_sms: int | None
    first_seen: float
    last_change: float
    last_seen: float
    gone: bool = False
    quota_at_poll: int | None = None
    """The smaller of the quotas the last poll reported (None: no quota), before any local
    decrement: with several instances every instance's sends since then count against it."""
    online_changes: int = 0
    reg_changes: int = 0
    quarantined_until: float = 0.0
    """End of the quarantine after repeated line-class CMS errors (LineRegistry.auto, shared
    through the ledger); 0 when there is none."""
    quarantine_reason: str | None = None
    consecutive_line_errors: int = 0
    """Line errors in a row among the reports this instance applied (not shared)."""
    manual_quarantine: ManualQuarantine | None = None
    """Set by an operator; only an operator releases it (no expiry)."""
    last_error_code: str | None = None
    """CMS code of the line's latest line-class send failure (status page, API)."""
    last_error_at: float | None = None

    @property
    def quota_left(self) -> bool:
        return self.remain_sms != 0 and self.day_remain_sms != 0

    def auto_quarantined(self, now: float) -> bool:
        return self.quarantined_until > now

    def quarantined(self, now: float) -> bool:
        """Routing must not use the line: an operator says so, or its errors did."""
        return self.manual_quarantine is not None or self.quarantined_until > now

    @property
    def healthy(self) -> bool:
        """What `goipd_line_healthy` exports: usable for routing, send-rate aside."""
        return self.state is LineState.REGISTERED and not self.quarantined(time.time())

    @property
    def state(self) -> LineState:
        if self.gone:
            return LineState.GONE
        if not self.online:
            return LineState.OFFLINE
        if not self.registered:
            return LineState.LOGGED_OUT
        if not self.quota_left:
            return LineState.QUOTA_EXHAUSTED
        return LineState.REGISTERED


@dataclass(slots=True)
class ServerState:
    name: str
    up: bool = False
    polled: bool = False
    """At least one poll finished (successfully or not): counts toward readiness."""
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_reason: ErrorReason | None = None
    consecutive_failures: int = 0
    lines: dict[str, Line] = field(default_factory=dict)
    owned: bool = True
    """This instance holds the server's polling lease (goipd/fleet/ha.py): it polls the server and
    exports its fleet metrics. Otherwise its lines are copied from the owner's snapshots."""
    setup_problems: dict[str, str] = field(default_factory=dict)
    """Setup problems its replies showed (a PHP warning before the JSON), by key
    (goipd/upstream/goip.py SETUP_FIXES), with the first warning seen."""

    stalled_since: float | None = None
    """When goipd found the server's engine stalled (goipd/reports/stalls.py): routing leaves
    the server alone until its sends move on again. None while the engine works."""
    stall_detail: str | None = None

    @property
    def mbstring_missing(self) -> bool:
        """The server lacks php-mbstring: it counts every text's parts by bytes."""
        return MBSTRING_MISSING in self.setup_problems


class LineRegistry:
    def __init__(self, server_names: Iterable[str] = ()) -> None:
        self.servers: dict[str, ServerState] = {}
        self.generation = 0
        """Bumped whenever the set of lines changes, so readers can cache derived structures."""
        self.manual: dict[tuple[str, str], ManualQuarantine] = {}
        """Operator quarantines by (server, line), including lines not reported right now: a
        line that (re)appears gets its override back."""
        self.auto: dict[tuple[str, str], AutoQuarantine] = {}
        """Quarantines after line errors by (server, line), this instance's and those the
        ledger holds (goipd/fleet/quarantine.py), kept like `manual` for a line that
        reappears. Run-out ones leave at the next adoption of the ledger's set."""
        self.balances: dict[tuple[str, str], LineBalance] = {}
        """Each line's last prepaid balance and read error (goipd/fleet/balances.py), by
        (server, line), as the ledger holds them."""
        self.balance_thresholds: dict[tuple[str, str], float] = {}
        """The `low` of the balance check that applies to each line, where one is set."""
        self.remediations: dict[tuple[str, str], Remediation] = {}
        """Each line's latest remediation of the last days (goipd/fleet/remediation.py)."""
        self.devices: dict[tuple[str, str], DeviceLine] = {}
        """What the GoIP device port of each line a device is configured for shows (signal,
        operator, SIM, module), with the device's latest poll (goipd/fleet/devices.py), by
        (server, line). Only the instance polling the server fills in readings."""
        self.set_servers(server_names)

    def set_servers(self, names: Iterable[str]) -> None:
        """Add new servers and forget removed ones (with their lines), keep the rest as is."""
        wanted = list(names)
        for name in list(self.servers):
            if name not in wanted:
                del self.servers[name]
                self.generation += 1
                log.info("server_removed", server=name)
        for name in wanted:
            self.servers.setdefault(name, ServerState(name))

    def note_setup_problems(self, server: str, diagnostics: Iterable[str]) -> list[str]:
        """Remember what a reply's PHP diagnostics say about the server's setup; returns the
        keys not known before."""
        state = self.servers.get(server)
        if state is None:
            return []
        new = []
        for diagnostic in diagnostics:
            key = setup_problem(diagnostic)
            if key not in state.setup_problems:
                state.setup_problems[key] = diagnostic
                new.append(key)
        return new

    def lines(self) -> Iterator[Line]:
        for server in self.servers.values():
            yield from server.lines.values()

    def line(self, server: str, line_id: str) -> Line | None:
        state = self.servers.get(server)
        return state.lines.get(line_id) if state else None

    @property
    def first_round_done(self) -> bool:
        return all(server.polled for server in self.servers.values())

    def apply_poll(self, server_name: str, statuses: list[LineStatus], now: float) -> None:
        server = self.servers.get(server_name)
        if server is None:  # removed by a reload while its poll was in flight
            return
        if not server.up:
            log.info(
                "server_recovered" if server.polled else "server_reached",
                server=server_name,
                lines=len(statuses),
                failures=server.consecutive_failures,
            )
        server.up = server.polled = True
        server.last_poll = server.last_success = now
        server.consecutive_failures = 0
        server.last_error = server.last_error_reason = None
        seen = set()
        moved = False
        for status in statuses:
            seen.add(status.line_id)
            line = server.lines.get(status.line_id)
            if line is None or line.gone:
                self._appear(server, status, line, now)
            else:
                moved = _update(line, status, now) or moved
        if moved and server.stalled_since is not None:
            # Only the engine writes the lines' state: a change proves it runs again (a
            # restarted engine marks every line offline until its next keepalive).
            self.clear_stall(server_name, now, "line states changed")
        for line in server.lines.values():
            if line.line_id not in seen and not line.gone:
                self.generation += 1
                line.gone = True
                line.last_change = now
                log.warning("line_disappeared", server=server_name, line=line.line_id)

    def _appear(
        self, server: ServerState, status: LineStatus, old: Line | None, now: float
    ) -> None:
        line = Line(
            server=server.name,
            line_id=status.line_id,
            online=status.online,
            registered=status.registered,
            reg_raw=status.reg_raw,
            remain_sms=status.remain_sms,
            day_remain_sms=status.day_remain_sms,
            first_seen=old.first_seen if old else now,
            last_change=now,
            last_seen=now,
            quota_at_poll=_quota(status),
        )
        if old is not None:
            line.online_changes, line.reg_changes = old.online_changes, old.reg_changes
        self.adopt_quarantines(line)
        server.lines[status.line_id] = line
        self.generation += 1
        log.info(
            "line_reappeared" if old else "line_appeared",
            server=server.name,
            line=line.line_id,
            online=line.online,
            reg=line.reg_raw,
            remain_sms=line.remain_sms,
            day_remain_sms=line.day_remain_sms,
        )

    def note_send_result(
        self,
        server: str,
        line_id: str,
        *,
        line_error: bool,
        code: str | None,
        threshold: int,
        cooldown: float,
        now: float,
    ) -> bool:
        """Count line-class errors; quarantine after `threshold` in a row. True if it just did:
        the quarantine is then `auto[(server, line_id)]`, for the caller to store."""
        line = self.line(server, line_id)
        if line is None:
            return False
        if not line_error:
            line.consecutive_line_errors = 0
            return False
        line.consecutive_line_errors += 1
        line.last_error_code, line.last_error_at = code, now
        if line.consecutive_line_errors < threshold or line.quarantined(now):
            return False
        reason = f"{line.consecutive_line_errors} line errors in a row (CMS {code})"
        self.set_auto(
            server, line_id, AutoQuarantine(server, line_id, reason, code, now, now + cooldown)
        )
        line.consecutive_line_errors = 0
        log.warning(
            "line_quarantined", server=server, line=line_id, reason=reason, seconds=cooldown
        )
        return True

    def adopt_quarantines(self, line: Line) -> None:
        """Give a line new to the registry (appeared, or copied from a snapshot) the
        quarantines kept for its (server, line)."""
        key = (line.server, line.line_id)
        line.manual_quarantine = self.manual.get(key)
        auto = self.auto.get(key)
        if auto is not None:
            line.quarantined_until, line.quarantine_reason = auto.until, auto.reason

    def set_manual(self, server: str, line_id: str, quarantine: ManualQuarantine | None) -> None:
        """Put an operator's quarantine on a line (None lifts it); kept for absent lines too."""
        key = (server, line_id)
        if quarantine is None:
            self.manual.pop(key, None)
        else:
            self.manual[key] = quarantine
        line = self.line(server, line_id)
        if line is not None:
            line.manual_quarantine = quarantine

    def replace_manual(self, quarantines: dict[tuple[str, str], ManualQuarantine]) -> None:
        """Adopt the complete set of operator quarantines (as stored in the ledger)."""
        for server, line_id in set(self.manual) - set(quarantines):
            self.set_manual(server, line_id, None)
        for (server, line_id), quarantine in quarantines.items():
            if self.manual.get((server, line_id)) != quarantine:
                self.set_manual(server, line_id, quarantine)

    def set_auto(self, server: str, line_id: str, quarantine: AutoQuarantine | None) -> None:
        """Put a quarantine after line errors on a line (None lifts it); kept for absent lines."""
        key = (server, line_id)
        if quarantine is None:
            self.auto.pop(key, None)
        else:
            self.auto[key] = quarantine
        line = self.line(server, line_id)
        if line is not None:
            line.quarantined_until = quarantine.until if quarantine else 0.0
            line.quarantine_reason = quarantine.reason if quarantine else None

    def replace_auto(self, quarantines: dict[tuple[str, str], AutoQuarantine], now: float) -> bool:
        """Adopt the complete set of quarantines after line errors (as stored in the ledger);
        True if one that was still running here ended."""
        ended = False
        for server, line_id in set(self.auto) - set(quarantines):
            ended = ended or self.auto[(server, line_id)].until > now
            self.set_auto(server, line_id, None)
        for (server, line_id), quarantine in quarantines.items():
            if self.auto.get((server, line_id)) != quarantine:
                self.set_auto(server, line_id, quarantine)
        return ended

    def release_auto(self, server: str, line_id: str, now: float) -> bool:
        """End a quarantine after line errors early (an operator's call); True if there was one."""
        running = self.auto.get((server, line_id))
        line = self.line(server, line_id)
        if line is not None:
            line.consecutive_line_errors = 0
        ended = (running is not None and running.until > now) or (
            line is not None and line.auto_quarantined(now)
        )
        self.set_auto(server, line_id, None)
        return ended

    def mark_stalled(self, server_name: str, now: float, detail: str) -> bool:
        """The server's engine does not send: True if this is news."""
        server = self.servers.get(server_name)
        if server is None or server.stalled_since is not None:
            return False
        server.stalled_since, server.stall_detail = now, detail
        log.warning("server_stalled", server=server_name, detail=detail)
        return True

    def clear_stall(self, server_name: str, now: float, why: str) -> bool:
        """The server's engine works again: True if it was stalled."""
        server = self.servers.get(server_name)
        if server is None or server.stalled_since is None:
            return False
        log.info(
            "server_unstalled",
            server=server_name,
            why=why,
            stalled_for=round(now - server.stalled_since, 1),
        )
        server.stalled_since = server.stall_detail = None
        return True

    def apply_failure(self, server_name: str, reason: ErrorReason, detail: str, now: float) -> None:
        server = self.servers.get(server_name)
        if server is None:
            return
        if server.up or not server.polled:
            log.warning("server_down", server=server_name, reason=reason.value, detail=detail)
        server.up = False
        server.polled = True
        server.last_poll = now
        server.consecutive_failures += 1
        server.last_error = detail
        server.last_error_reason = reason


def _update(line: Line, status: LineStatus, now: float) -> bool:
    """Adopt a poll's status of the line; True if its online or registered state changed."""
    line.last_seen = now
    ctx = {"server": line.server, "line": line.line_id}
    moved = status.online != line.online or status.registered != line.registered
    if status.online != line.online:
        line.online = status.online
        line.online_changes += 1
        line.last_change = now
        if status.online:
            log.info("line_connected", **ctx)
        else:
            log.warning("line_disconnected", **ctx)
    if status.registered != line.registered:
        line.registered = status.registered
        line.reg_changes += 1
        line.last_change = now
        if status.registered:
            log.info("sim_logged_in", **ctx)
        else:
            log.warning("sim_logged_out", reg=status.reg_raw, **ctx)
    line.reg_raw = status.reg_raw
    for quota, old, new in (
        ("total", line.remain_sms, status.remain_sms),
        ("day", line.day_remain_sms, status.day_remain_sms),
    ):
        if new == 0 and old != 0:
            log.warning("quota_exhausted", quota=quota, **ctx)
        elif old == 0 and new != 0:
            log.info("quota_restored", quota=quota, remaining=new, **ctx)
    line.remain_sms = status.remain_sms
    line.day_remain_sms = status.day_remain_sms
    line.quota_at_poll = _quota(status)
    return moved


def _quota(status: LineStatus) -> int | None:
    quotas = [q for q in (status.remain_sms, status.day_remain_sms) if q is not None]
    return min(quotas) if quotas else None
