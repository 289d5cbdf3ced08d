"""Cloud providers disabled after account refusals (credentials, credit, a frozen account), kept
in the ledger: they survive a restart, and every instance on one ledger stops and resumes using
a provider together.

The router decides (goipd/dispatch/routing.py: a refusal disables, an accepted probe or a balance
poll with credit enables); this keeps the ledger's `provider_disables` in step with it both ways.
Each change the router makes is written at once, in a task of its own so that dispatch never
waits on the ledger; `sync()`, at start and every few seconds, adopts what other instances (or
the previous process) stored. A reload enables every provider, on every instance.

Probe sends: only the instance holding the provider's `cloud:<provider>` lease makes them
(`Router.probes`), at the probe time stored with the disable, so instances that share a disable
do not all probe at once. A probe moves the probe time on in that instance only; a refused probe
stores the next one (the disable is written again). After a restart or a lease moving, the
stored time counts: a probe that got neither answer (a timeout) may be made once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from goipd.dispatch.routing import Router
from goipd.ledger.base import SharedRouting
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError

log = structlog.get_logger("goipd.dispatch.disables")


class ProviderDisables:
    def __init__(
        self,
        ledger: SharedRouting,
        router: Router,
        metrics: Metrics,
        on_enable: Callable[[], None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self.router = router
        self.metrics = metrics
        self.on_enable = on_enable
        """Called when a provider another instance enabled is back here (wakes dispatch)."""
        router.on_cloud_change = self._changed
        self._dirty: set[str] = set()
        """Providers whose state here the ledger has not taken yet (at most one per provider)."""
        self._enable_all = False
        """A reload's "every provider is fixed" not stored yet."""
        self._changes = 0
        """Bumped by every change made here, so a sync that read the ledger before the change
        committed does not put the old state back."""
        self._lock = asyncio.Lock()
        self._writing: asyncio.Task[None] | None = None

    def _changed(self, name: str) -> None:
        self._dirty.add(name)
        self._changes += 1
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(
                self._write_soon(), name="provider_disables"
            )

    async def _write_soon(self) -> None:
        try:
            await self._write_changes()
        except LedgerError as exc:
            # Still in effect here; the next sync writes it (and adopts nothing before).
            log.error("provider_disable_unstored", providers=sorted(self._dirty), reason=str(exc))

    async def _write_changes(self) -> None:
        """Store the state this router has for every provider changed here (raises LedgerError
        and keeps the rest for later when the ledger refuses)."""
        async with self._lock:
            if self._enable_all:
                await self.ledger.enable_providers(None)
                self._enable_all = False
            while self._dirty:
                name = min(self._dirty)
                self._dirty.discard(name)
                disable = self.router.cloud_disable(name)
                try:
                    if disable is None:
                        await self.ledger.enable_providers([name])
                    else:
                        await self.ledger.disable_provider(disable)
                except LedgerError:
                    self._dirty.add(name)
                    raise

    async def reloaded(self) -> None:
        """A reload enabled every provider here (`Router.reconfigure`): so it is everywhere.
        Never raises: what the ledger refuses now is stored at the next sync."""
        self._dirty.clear()
        self._enable_all = True
        self._changes += 1
        try:
            await self._write_changes()
        except LedgerError as exc:
            log.error("provider_disable_unstored", providers="all", reason=str(exc))

    async def sync(self) -> None:
        """Store what the ledger refused before, then adopt what it holds (raises LedgerError
        when it cannot be reached)."""
        await self._write_changes()
        before = self._changes
        stored = {d.provider: d for d in await self.ledger.provider_disables()}
        if self._changes != before:
            return  # a change landed while reading; the next sync reads it back
        enabled = False
        for name in sorted(self.router.clouds):
            disable = stored.get(name)
            if disable is not None:
                if self.router.adopt_cloud_disable(disable):
                    log.warning("provider_disable_adopted", provider=name, code=disable.code)
            elif self.router.adopt_cloud_enable(name):
                log.info("provider_enable_adopted", provider=name)
                enabled = True
            # Every time, not only on a change: a provider (re)configured starts at 0.
            disabled = self.router.cloud_disable(name) is not None
            self.metrics.provider_disabled.labels(name).set(1 if disabled else 0)
        if enabled:
            self.on_enable()

    async def stop(self) -> None:
        """Let a write under way finish, before the ledger closes."""
        if self._writing is not None and not self._writing.done():
            await asyncio.gather(self._writing, return_exceptions=True)
