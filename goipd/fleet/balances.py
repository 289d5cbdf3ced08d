"""Prepaid balances read by USSD through each SMS Server, on a schedule.

Which lines are read, and how, is `balances.checks`: for each line the most specific check
applies (one naming the line, then its carrier group, then its server). Reads run on the
instance that polls the server (one USSD session per server at a time: the client spaces them),
each line in turn; a read that fails keeps the line's last good balance and records why beside
it. Lines not online and registered are skipped: they cannot answer, and asking one would hold
the server's one USSD session for two minutes. What was read lives in the ledger, so it
outlives restarts and every instance shows it. A line that has never been read (a new SIM, a
new check) is read soon after it can be rather than at the next scheduled time, which may be
hours away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from goipd.config import BalanceCheck, Settings
from goipd.fleet.actions import LEASE_TTL, ussd_lease
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Coordination, LineUpkeep
from goipd.ledger.upkeep import LineBalance
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from goipd.upstream.errors import UpstreamError
from goipd.upstream.goip_ussd import UssdClient

log = structlog.get_logger("goipd.fleet.balances")
SYNC_INTERVAL = 60.0
"""How often the balances other instances read are fetched from the ledger."""


class LeaseHeld(Exception):
    """Another instance runs a USSD session on the server."""

    def __init__(self, server: str) -> None:
        super().__init__(f"another goipd instance runs a USSD session on {server}")
        self.server = server


@dataclass(frozen=True, slots=True)
class BalanceTarget:
    server: str
    line: str
    check: BalanceCheck


def check_for(
    checks: Iterable[BalanceCheck], server: str, line: str, groups: Mapping[str, Iterable[str]]
) -> BalanceCheck | None:
    """The check that applies to one line: the one naming it, else one naming a carrier group
    it is in, else one for its whole server."""
    by_group = None
    by_server = None
    for check in checks:
        if check.server != server:
            continue
        if check.line is not None:
            if check.line == line:
                return check
        elif check.provider is not None:
            if by_group is None and line in groups.get(check.provider, ()):
                by_group = check
        elif by_server is None:
            by_server = check
    return by_group or by_server


def targets(settings: Settings, registry: LineRegistry) -> list[BalanceTarget]:
    """Every line a check applies to: the lines the server reports (not gone), and lines a
    check names that it does not report right now are left out until it does."""
    found = []
    checks = settings.balances.checks
    for server in settings.servers:
        state = registry.servers.get(server.name)
        if state is None:
            continue
        for line in sorted(state.lines):
            if state.lines[line].gone:
                continue
            check = check_for(checks, server.name, line, server.groups)
            if check is not None:
                found.append(BalanceTarget(server.name, line, check))
    return found


class BalanceLedger(LineUpkeep, Coordination, Protocol):
    """Where balances are kept, and the leases that keep USSD sessions of one server apart
    across instances."""


class BalanceChecker:
    def __init__(
        self,
        ledger: BalanceLedger,
        registry: LineRegistry,
        settings: Callable[[], Settings],
        metrics: Metrics,
        clients: Callable[[str], UssdClient | None],
        reads: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.clients = clients
        self.reads = reads
        """Whether this instance reads the server's balances: it polls it, and it is up."""
        self.clock = clock
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()
        """Servers whose round of reads is under way: a schedule firing again waits for none."""
        self._first_tried: set[tuple[str, str]] = set()
        """Lines never read that this process has tried once already (the schedule does the
        rest)."""

    async def run(self) -> None:
        """Load what the ledger holds, schedule the reads, and keep other instances' reads
        in view until cancelled."""
        self._scheduler = AsyncIOScheduler()
        self._schedule()
        self._scheduler.start()
        try:
            while True:
                await self.sync()
                self._start(self._never_read())
                await asyncio.sleep(SYNC_INTERVAL)
        finally:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    def reload(self) -> None:
        """The configuration changed: schedule the checks it has now."""
        if self._scheduler is not None:
            self._scheduler.remove_all_jobs()
            self._schedule()

    def _schedule(self) -> None:
        assert self._scheduler is not None
        settings = self.settings().balances
        schedules = {check.schedule or settings.schedule for check in settings.checks}
        for schedule in sorted(schedules):
            self._scheduler.add_job(
                self._fire,
                CronTrigger.from_crontab(schedule),
                args=[schedule],
                id=f"balances:{schedule}",
                coalesce=True,
                misfire_grace_time=600,
            )

    async def _fire(self, schedule: str) -> None:
        default = self.settings().balances.schedule
        self._start(
            [
                t
                for t in targets(self.settings(), self.registry)
                if (t.check.schedule or default) == schedule
            ]
        )

    def _never_read(self) -> list[BalanceTarget]:
        found = [
            t
            for t in targets(self.settings(), self.registry)
            if (t.server, t.line) not in self.registry.balances
            and (t.server, t.line) not in self._first_tried
            and self.reads(t.server)
            and self._reachable(t)
        ]
        self._first_tried.update((t.server, t.line) for t in found)
        return found

    def _start(self, chosen: list[BalanceTarget]) -> None:
        if not chosen:
            return
        task = asyncio.create_task(self.read(chosen))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def target(self, server: str, line: str) -> BalanceTarget | None:
        """The line's balance check, if one applies to it."""
        return next(
            (
                t
                for t in targets(self.settings(), self.registry)
                if (t.server, t.line) == (server, line)
            ),
            None,
        )

    async def sync(self) -> None:
        try:
            stored = await self.ledger.line_balances()
        except LedgerError as exc:
            log.warning("balances_sync_failed", reason=str(exc))
            return
        self.registry.balances = {(b.server, b.line): b for b in stored}
        self._thresholds()

    def _thresholds(self) -> None:
        self.registry.balance_thresholds = {
            (t.server, t.line): t.check.low
            for t in targets(self.settings(), self.registry)
            if t.check.low is not None
        }

    async def read(self, chosen: Iterable[BalanceTarget]) -> None:
        """Read the balances of `chosen`: the servers side by side, each one's lines in turn
        (its USSD client takes one session at a time anyway); servers this instance does not
        read, or already reading, are skipped."""
        by_server: dict[str, list[BalanceTarget]] = {}
        for target in chosen:
            by_server.setdefault(target.server, []).append(target)
        await asyncio.gather(
            *(self._read_server(server, lines) for server, lines in by_server.items())
        )
        self._thresholds()

    async def _read_server(self, server: str, lines: list[BalanceTarget]) -> None:
        if server in self._busy or not self.reads(server):
            return
        client = self.clients(server)
        if client is None:
            return
        self._busy.add(server)
        try:
            for target in lines:
                if not self._reachable(target):
                    continue
                # Taken (and renewed) per line: a round of 32 lines may outlast the lease.
                if not await self._lease(server):
                    log.info("balances_deferred", server=server, reason="ussd session elsewhere")
                    return
                await self.read_one(client, target)
        finally:
            self._busy.discard(server)
            await self._unlease(server)

    async def read_now(self, client: UssdClient, target: BalanceTarget) -> LineBalance | None:
        """One line's balance, now (by hand): under the server's USSD lease; raises
        LeaseHeld when another instance holds it."""
        if not await self._lease(target.server):
            raise LeaseHeld(target.server)
        try:
            return await self.read_one(client, target)
        finally:
            await self._unlease(target.server)

    async def _lease(self, server: str) -> bool:
        name = ussd_lease(server)
        try:
            return name in await self.ledger.acquire_leases({name: LEASE_TTL})
        except LedgerError as exc:
            log.warning("balances_paused", reason=str(exc))
            return False

    async def _unlease(self, server: str) -> None:
        try:
            await self.ledger.release_leases([ussd_lease(server)])
        except LedgerError as exc:
            log.warning("ussd_lease_kept", server=server, reason=str(exc))

    def _reachable(self, target: BalanceTarget) -> bool:
        """Only a line online and registered can run a USSD session: asking another one holds
        the server's one session for the two minutes the server waits for an answer."""
        line = self.registry.line(target.server, target.line)
        return line is not None and not line.gone and line.online and line.registered

    async def read_one(self, client: UssdClient, target: BalanceTarget) -> LineBalance | None:
        """One line's balance, stored; None when the ledger refused it (logged)."""
        check = target.check
        now = self.clock()
        try:
            read = await client.balance(
                target.line, check.code, check.pattern, decimal=check.decimal
            )
        except UpstreamError as exc:  # an unreadable answer too (BALANCE_UNREADABLE)
            return await self._failed(target, exc.reason.value, exc.detail, now)
        try:
            await self.ledger.record_balance(
                target.server, target.line, read.balance, read.answer.text, now
            )
        except LedgerError as exc:
            log.error(
                "balance_store_failed", server=target.server, line=target.line, reason=str(exc)
            )
            return None
        self.metrics.balance_reads.labels(target.server, "ok").inc()
        balance = LineBalance(
            target.server, target.line, read.balance, read.answer.text, now, None, None, None
        )
        self.registry.balances[(target.server, target.line)] = balance
        log.info(
            "balance_read",
            server=target.server,
            line=target.line,
            balance=read.balance,
            seconds=round(read.answer.elapsed, 1),
        )
        return balance

    async def _failed(
        self, target: BalanceTarget, reason: str, detail: str, now: float
    ) -> LineBalance | None:
        self.metrics.balance_reads.labels(target.server, reason).inc()
        log.warning(
            "balance_read_failed",
            server=target.server,
            line=target.line,
            reason=reason,
            detail=detail,
        )
        try:
            await self.ledger.record_balance_error(target.server, target.line, reason, detail, now)
        except LedgerError as exc:
            log.error(
                "balance_store_failed", server=target.server, line=target.line, reason=str(exc)
            )
            return None
        before = self.registry.balances.get((target.server, target.line))
        balance = LineBalance(
            target.server,
            target.line,
            before.balance if before else None,
            before.answer if before else None,
            before.read_at if before else None,
            reason,
            detail,
            now,
        )
        self.registry.balances[(target.server, target.line)] = balance
        return balance
