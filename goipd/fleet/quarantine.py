"""Line quarantines, both kinds stored in the ledger and mirrored into the line registry:
operators' manual ones, and those after line errors (`routing.quarantine_after` in a row).

The ledger is the truth (it survives restarts and is shared by goipd instances on one
PostgreSQL); the registry's copy is what routing, the API and the metrics read. `sync()` runs at
start and every few seconds, so a quarantine set through another instance arrives here too.

The line errors in a row that lead to a quarantine are counted per instance, among the reports
each applies (the load balancer spreads them); the quarantine they lead to is shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.ledger.base import Coordination, SharedRouting
from goipd.ledger.shared import AutoQuarantine
from goipd.model import LedgerError, LineQuarantine

log = structlog.get_logger("goipd.fleet.quarantine")


@dataclass(frozen=True, slots=True)
class Released:
    manual: bool
    """A stored manual quarantine was deleted."""
    auto: bool
    """A quarantine after line errors was ended early."""


class AutoQuarantines:
    """Quarantines after line errors: stored when this instance's reports lead to one, adopted
    from the ledger by `sync()`. Storing one a report led to never fails the report: a
    quarantine the ledger refused stays in effect here and is stored at the next sync."""

    def __init__(
        self, ledger: SharedRouting, registry: LineRegistry, on_release: Callable[[], None]
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.on_release = on_release
        self._unstored: dict[tuple[str, str], AutoQuarantine] = {}
        """This instance's quarantines the ledger has not taken yet (at most one per line)."""
        self._changes = 0
        """Bumped by every change made here, so a sync that read the ledger before the change
        committed does not put the old state back."""

    async def store(self, server: str, line: str, now: float) -> None:
        """Store the quarantine `registry.note_send_result` just put on the line."""
        quarantine = self.registry.auto.get((server, line))
        if quarantine is None:
            return
        self._changes += 1
        try:
            await self.ledger.put_auto_quarantine(quarantine, now)
        except LedgerError as exc:
            self._unstored[(server, line)] = quarantine
            log.error("auto_quarantine_unstored", server=server, line=line, reason=str(exc))

    async def release(self, server: str, line: str, now: float) -> bool:
        """End the line's quarantine after line errors early, everywhere; True if there was
        one (stored, or still only here). Raises LedgerError with nothing changed."""
        stored = await self.ledger.release_auto_quarantine(server, line, now)
        self._changes += 1
        self._unstored.pop((server, line), None)
        return self.registry.release_auto(server, line, now) or stored

    async def sync(self, now: float) -> None:
        """Store what the ledger refused before, then adopt what it holds (raises LedgerError
        when it cannot be reached)."""
        for key, quarantine in list(self._unstored.items()):
            if quarantine.until > now:
                await self.ledger.put_auto_quarantine(quarantine, now)
            if self._unstored.get(key) is quarantine:
                del self._unstored[key]
        before = self._changes
        stored = await self.ledger.auto_quarantines(now)
        if self._changes != before:
            return  # a change landed while reading; the next sync reads it back
        adopted = {(q.server, q.line): q for q in stored}
        if self.registry.replace_auto(adopted, now):
            self.on_release()


class ManualQuarantines:
    def __init__(
        self,
        ledger: Coordination,
        registry: LineRegistry,
        on_release: Callable[[], None],
        auto: AutoQuarantines | None = None,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.on_release = on_release
        self.auto = auto
        """Where a release also ends a quarantine after line errors, and what `sync()` syncs
        too; None: only the registry's (tests of manual quarantines alone)."""
        self._changes = 0
        """Bumped by every change made here, so a sync that read the ledger before the change
        committed does not put the old state back."""

    async def sync(self, now: float | None = None) -> None:
        """Adopt what the ledger holds, quarantines after line errors too (raises LedgerError
        when it cannot be read)."""
        if self.auto is not None:
            await self.auto.sync(time.time() if now is None else now)
        before = self._changes
        stored = await self.ledger.line_quarantines()
        if self._changes != before:
            return  # a change landed while reading; the next sync reads it back
        had = set(self.registry.manual)
        self.registry.replace_manual(
            {(q.server, q.line): ManualQuarantine(q.reason, q.since) for q in stored}
        )
        if had - set(self.registry.manual):
            self.on_release()

    async def quarantine(
        self, server: str, line: str, reason: str | None, now: float, client: str
    ) -> LineQuarantine:
        stored = await self.ledger.quarantine_line(server, line, reason, now)
        self._changes += 1
        self.registry.set_manual(server, line, ManualQuarantine(stored.reason, stored.since))
        log.warning(
            "line_quarantined",
            kind="manual",
            server=server,
            line=line,
            reason=reason,
            client=client,
        )
        return stored

    async def release(self, server: str, line: str, now: float, client: str) -> Released:
        manual = await self.ledger.release_line(server, line)
        self._changes += 1
        self.registry.set_manual(server, line, None)
        if self.auto is not None:
            auto = await self.auto.release(server, line, now)
        else:
            auto = self.registry.release_auto(server, line, now)
        if manual or auto:
            log.info(
                "line_released", server=server, line=line, manual=manual, auto=auto, client=client
            )
            self.on_release()
        return Released(manual, auto)


QUARANTINE_KEY = web.AppKey("quarantine", ManualQuarantines)
