"""Operators' manual line quarantines: stored in the ledger, mirrored into the line registry.

The ledger is the truth (it survives restarts and is shared by goipd instances on one
PostgreSQL); the registry's copy is what routing, the API and the metrics read. `sync()` runs at
start and every few seconds, so a quarantine set through another instance arrives here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.ledger.base import Coordination
from goipd.model import LineQuarantine

log = structlog.get_logger("goipd.fleet.quarantine")


@dataclass(frozen=True, slots=True)
class Released:
    manual: bool
    """A stored manual quarantine was deleted."""
    auto: bool
    """A quarantine after line errors was ended early (this instance's, it is not stored)."""


class ManualQuarantines:
    def __init__(
        self, ledger: Coordination, registry: LineRegistry, on_release: Callable[[], None]
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.on_release = on_release
        self._changes = 0
        """Bumped by every change made here, so a sync that read the ledger before the change
        committed does not put the old state back."""

    async def sync(self) -> None:
        """Adopt what the ledger holds (raises LedgerError when it cannot be read)."""
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
        auto = self.registry.release_auto(server, line, now)
        if manual or auto:
            log.info(
                "line_released", server=server, line=line, manual=manual, auto=auto, client=client
            )
            self.on_release()
        return Released(manual, auto)


QUARANTINE_KEY = web.AppKey("quarantine", ManualQuarantines)
