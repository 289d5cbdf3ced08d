"""Self-healing lines (opt-in, `remediation:`): a line that stays online but unregistered, or
quarantined after line errors, for long enough gets its GSM module rebooted through the SMS
Server, and is then watched until it registers again or `recovery_wait` runs out.

What keeps it from doing harm:
- one reboot per line and incident, and none within `cooldown` of the line's last: recorded in
  the ledger before the reboot, atomically with those checks, so instances sharing a ledger
  never reboot one line twice for one incident (goipd/ledger/upkeep_*.py);
- at most `max_per_server` lines of a server rebooted and waited for at once;
- only the instance that polls the server acts on its lines, on what its own polls saw;
- a line that does not come back is left alone (until the cooldown ends) and pages once:
  `goipd_line_remediation_failed` stays 1 while it is still down (GoipdLineRemediationFailed).

An incident is the line's bad state since it began: since its last online/reg change for an
unregistered line, since the quarantine for a quarantined one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from goipd.config import RemediationSettings
from goipd.fleet.actions import ActionRefused, LineActions
from goipd.fleet.registry import Line, LineRegistry
from goipd.ledger.base import LineUpkeep
from goipd.ledger.upkeep import PENDING, Remediation
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError

log = structlog.get_logger("goipd.fleet.remediation")
INTERVAL = 2.0
"""How often lines are looked at: a fraction of any sensible unregistered_for."""
IDLE_INTERVAL = 60.0
"""With remediation off and nothing pending, only the history shown on the lines is refreshed:
a ledger read every two seconds on every goipd would buy nothing."""
HISTORY = 7 * 86400.0
"""Remediations shown on their line (API, status page) this long after they began."""
ACTION = "reboot_module"
REMEDIATION = "remediation"
"""Who asked, in the action log."""


@dataclass(frozen=True, slots=True)
class Incident:
    kind: str
    """unregistered or quarantined."""
    since: float


def incident(
    line: Line, registry: LineRegistry, now: float, settings: RemediationSettings
) -> Incident | None:
    """The line's incident, once it has lasted long enough to act on."""
    if line.gone or line.manual_quarantine is not None:
        return None  # an operator's quarantine is the operator's to end
    if line.online and not line.registered and now - line.last_change >= settings.unregistered_for:
        return Incident("unregistered", line.last_change)
    auto = registry.auto.get((line.server, line.line_id))
    if (
        auto is not None
        and line.auto_quarantined(now)
        and now - auto.since >= settings.quarantined_for
    ):
        return Incident("quarantined", auto.since)
    return None


class Remediator:
    def __init__(
        self,
        ledger: LineUpkeep,
        registry: LineRegistry,
        actions: LineActions,
        settings: Callable[[], RemediationSettings],
        metrics: Metrics,
        acts_on: Callable[[str], bool],
        release_quarantine: Callable[[str, str, float], Awaitable[bool]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.actions = actions
        self.settings = settings
        self.metrics = metrics
        self.acts_on = acts_on
        """Whether this instance acts on the server's lines: it polls it, and it is up."""
        self.release_quarantine = release_quarantine
        self.clock = clock
        self._reboots: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                await self.tick()
                active = self.settings().enabled or any(
                    r.result == PENDING for r in self.registry.remediations.values()
                )
                await asyncio.sleep(INTERVAL if active else IDLE_INTERVAL)
        finally:
            for task in list(self._reboots):
                task.cancel()
            await asyncio.gather(*self._reboots, return_exceptions=True)

    async def tick(self) -> None:
        """Look at every line once: settle the pending remediations, start the due ones."""
        now = self.clock()
        try:
            known = await self.ledger.remediations(now - HISTORY)
        except LedgerError as exc:
            log.warning("remediation_paused", reason=str(exc))
            return
        latest: dict[tuple[str, str], Remediation] = {}
        for remediation in known:
            latest[(remediation.server, remediation.line)] = remediation
        self.registry.remediations = latest
        for remediation in latest.values():
            if remediation.result == PENDING and self.acts_on(remediation.server):
                await self._settle(remediation, now)
        settings = self.settings()
        if not settings.enabled:
            return
        for server in list(self.registry.servers.values()):
            if not self.acts_on(server.name):
                continue
            for line in list(server.lines.values()):
                found = incident(line, self.registry, now, settings)
                if found is not None and not self.actions.busy(server.name, line.line_id):
                    await self._start(line, found, now, settings)

    async def _start(
        self, line: Line, found: Incident, now: float, settings: RemediationSettings
    ) -> None:
        try:
            started = await self.ledger.start_remediation(
                line.server,
                line.line_id,
                found.kind,
                found.since,
                ACTION,
                now,
                cooldown=settings.cooldown,
                max_per_server=settings.max_per_server,
            )
        except LedgerError as exc:
            log.warning("remediation_paused", reason=str(exc))
            return
        if started is None:
            return  # this incident was handled, the line's cooldown runs, or the server is full
        self.registry.remediations[(line.server, line.line_id)] = started
        self.metrics.remediations.labels(line.server, "started").inc()
        log.warning(
            "remediation_started",
            server=line.server,
            line=line.line_id,
            incident=found.kind,
            incident_seconds=round(now - found.since),
            action=ACTION,
        )
        task = asyncio.create_task(self._reboot(started))
        self._reboots.add(task)
        task.add_done_callback(self._reboots.discard)

    async def _reboot(self, remediation: Remediation) -> None:
        try:
            result = await self.actions.reboot(
                remediation.server, remediation.line, device=False, asked_by=REMEDIATION
            )
        except ActionRefused as exc:
            # Someone else acts on the line right now: this incident's reboot is theirs.
            await self._finish(remediation, "refused", exc.detail)
            return
        if not result.ok:
            await self._finish(remediation, "refused", result.detail)

    async def _settle(self, remediation: Remediation, now: float) -> None:
        line = self.registry.line(remediation.server, remediation.line)
        if self.actions.busy(remediation.server, remediation.line):
            return  # the reboot is still being asked for
        waited = now - remediation.started_at >= self.settings().recovery_wait
        registered = line is not None and not line.gone and line.online and line.registered
        # Registered again after the reboot: a change since it. A line quarantined while
        # registered may show none: the real engine notices a rebooting module only after 92 s
        # without keepalives, so a quick reboot never appears in querylines; registered at the
        # end of the wait, it is back.
        changed = line is not None and line.last_change > remediation.started_at
        back = registered and (changed or (remediation.incident == "quarantined" and waited))
        if back:
            assert line is not None
            if remediation.incident == "quarantined":
                # Its errors came before the reboot: routing may try it again at once.
                await self.release_quarantine(remediation.server, remediation.line, now)
            await self._finish(remediation, "recovered", None)
        elif waited:
            state = (
                "gone"
                if line is None or line.gone
                else (f"online={'yes' if line.online else 'no'}, reg={line.reg_raw or '?'}")
            )
            await self._finish(
                remediation,
                "failed",
                f"not registered {round(now - remediation.started_at)} s after the reboot "
                f"({state})",
            )

    async def _finish(self, remediation: Remediation, result: str, detail: str | None) -> None:
        now = self.clock()
        try:
            finished = await self.ledger.finish_remediation(
                remediation.server,
                remediation.line,
                remediation.incident_since,
                result,
                detail,
                now,
            )
        except LedgerError as exc:
            log.warning("remediation_paused", reason=str(exc))
            return
        if not finished:
            return  # another instance settled it
        self.metrics.remediations.labels(remediation.server, result).inc()
        report = log.info if result == "recovered" else log.error
        report(
            "remediation_done",
            server=remediation.server,
            line=remediation.line,
            result=result,
            detail=detail,
            seconds=round(now - remediation.started_at),
        )
        self.registry.remediations[(remediation.server, remediation.line)] = Remediation(
            remediation.server,
            remediation.line,
            remediation.incident_since,
            remediation.incident,
            remediation.action,
            remediation.owner,
            remediation.started_at,
            result,
            now,
            detail,
        )
