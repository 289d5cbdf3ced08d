"""Several goipd instances on one ledger: who polls which SMS Server, and who is alive.

Every instance renews, every third of `lease_ttl`, one statement's worth of leases:

- `instance:<id>`, its heartbeat (3 x lease_ttl). Claims of an instance whose heartbeat expired
  are settled by the others (reconcile.py); claims of a live instance are left to it.
- `poll:<server>` for every configured server (lease_ttl): the holder polls that server, writes
  its snapshot for the others (fleet/snapshot.py), exports its fleet metrics and asks it about
  unreported sends. A dead holder's lease expires within lease_ttl and another instance takes
  it at its next renewal: the server is polled again within 4/3 x lease_ttl.
- `cloud:<provider>` and `forward` (lease_ttl): jobs one instance does for all, because doing
  them twice costs (c123 allows one reply poll per 10 minutes) or repeats work: a provider's
  balance, status and reply polls, and forwarding inbound SMS.

An instance that cannot renew (the database is unreachable) gives its servers up once its last
renewal would have expired, so two instances never both think they poll one server for longer
than a renewal takes. On SQLite there is one instance, which holds every lease.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import structlog

from goipd.fleet import snapshot
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Coordination
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError

log = structlog.get_logger("goipd.fleet.ha")
INSTANCE_LEASE = "instance:"
POLL_LEASE = "poll:"
CLOUD_LEASE = "cloud:"
FORWARD_LEASE = "forward"
HEARTBEAT_FACTOR = 3.0
"""An instance is dead after missing this many lease_ttl worth of renewals (9 renewals)."""
RENEWALS_PER_TTL = 3


def default_instance_id(shared: bool = True) -> str:
    """On a shared ledger: the host name plus a random suffix, unique even for two instances on
    one host, and new at every start (a restarted process is a new instance, which takes over
    once its predecessor's leases expire). On SQLite, whose file has one instance: the host
    name, so a restart takes its own leases and settles its own claims at once."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    host = host[:48] or "goipd"
    return f"{host}-{secrets.token_hex(3)}" if shared else host


def poll_lease(server: str) -> str:
    return f"{POLL_LEASE}{server}"


class Coordinator:
    def __init__(
        self,
        ledger: Coordination,
        registry: LineRegistry,
        metrics: Metrics,
        lease_ttl: float,
        poll_now: Callable[[str], Coroutine[Any, Any, None]],
        singletons: Callable[[], Collection[str]] = lambda: (),
        share_snapshots: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.metrics = metrics
        self.lease_ttl = lease_ttl
        self.poll_now = poll_now
        self.singletons = singletons
        """Names of the leases of one-instance jobs (`cloud:<provider>`, `forward`)."""
        self.share_snapshots = share_snapshots
        """Write snapshots for other instances; a SQLite ledger has none to read them."""
        self.clock = clock
        self._singletons: set[str] = set()
        self._held_until = 0.0
        """Monotonic time until which the last successful renewal surely holds."""
        self._published: dict[str, float | None] = {}
        """Owned server → last_poll of the snapshot written last."""
        self._versions: dict[str, int] = {}
        """Followed server → version of the snapshot applied last."""
        self._owned: set[str] = set()
        self._polls: set[asyncio.Task[None]] = set()
        self._running = False
        self._stopping = False

    @property
    def instance_id(self) -> str:
        return self.ledger.instance_id

    def holds(self, lease: str) -> bool:
        """Whether this instance does the one-instance job `lease` now."""
        return lease in self._singletons and time.monotonic() < self._held_until

    def may_poll(self, server: str) -> bool:
        """Whether this instance polls `server` now: it took the lease, and the last renewal
        surely still holds (a renewal that is late, as when the event loop was held up, must
        not let two instances poll one server)."""
        return server in self._owned and time.monotonic() < self._held_until

    async def run(self) -> None:
        self._running = True
        while not self._stopping:
            await asyncio.sleep(self.lease_ttl / RENEWALS_PER_TTL)
            if not self._stopping:
                await self.tick()

    async def tick(self) -> None:
        """Renew or take leases, then exchange snapshots. Never raises LedgerError."""
        servers = list(self.registry.servers)
        wanted = {f"{INSTANCE_LEASE}{self.instance_id}": self.lease_ttl * HEARTBEAT_FACTOR}
        wanted.update((poll_lease(name), self.lease_ttl) for name in servers)
        wanted.update((name, self.lease_ttl) for name in self.singletons())
        asked = time.monotonic()
        try:
            # A renewal that hangs must not keep this instance polling past its lease.
            async with asyncio.timeout(self.lease_ttl / RENEWALS_PER_TTL):
                held = await self.ledger.acquire_leases(wanted)
        except (LedgerError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, LedgerError) else "no answer in time"
            if time.monotonic() < self._held_until:
                log.warning("lease_renewal_failed", reason=reason)
                return
            # Past the last renewal's expiry another instance may poll: step back.
            log.error("lease_renewal_failed", reason=reason, servers_given_up=True)
            held = set()
        else:
            self._held_until = asked + self.lease_ttl
        self._adopt(servers, held)
        for lease in held.symmetric_difference(self._singletons) & set(self.singletons()):
            event = "lease_acquired" if lease in held else "lease_lost"
            log.info(event, lease=lease, instance=self.instance_id)
        self._singletons = held & set(self.singletons())
        try:
            await self._forget_removed(servers)
            await self._publish()
            await self._follow()
        except LedgerError as exc:
            log.warning("fleet_snapshot_failed", reason=str(exc))

    async def _forget_removed(self, servers: list[str]) -> None:
        """Servers a reload removed: their leases go at once, to whoever still polls them."""
        removed = self._owned - set(servers)
        for name in set(self._published) | set(self._versions) | removed:
            if name not in servers:
                self._published.pop(name, None)
                self._versions.pop(name, None)
        if removed:
            self._owned -= removed
            await self.ledger.release_leases([poll_lease(name) for name in removed])

    def _adopt(self, servers: list[str], held: set[str]) -> None:
        for name in servers:
            state = self.registry.servers.get(name)
            if state is None:
                continue
            owned = poll_lease(name) in held
            state.owned = owned
            self.metrics.instance_leader.labels(name).set(1.0 if owned else 0.0)
            if owned and name not in self._owned:
                self._owned.add(name)
                self._versions.pop(name, None)
                log.info("lease_acquired", lease=poll_lease(name), instance=self.instance_id)
                if self._running:
                    # Poll at once: the previous owner may have died up to a lease ago. (At
                    # start-up the first poll round does it.)
                    task = asyncio.create_task(self.poll_now(name))
                    self._polls.add(task)
                    task.add_done_callback(self._polls.discard)
            elif not owned and name not in self._versions:
                self._versions[name] = 0  # follow the owner's snapshots from now on
                self._published.pop(name, None)
                if name in self._owned:
                    self._owned.discard(name)
                    log.warning("lease_lost", lease=poll_lease(name), instance=self.instance_id)
                else:
                    log.info("lease_held_elsewhere", lease=poll_lease(name))

    async def first_round(self, within: float) -> None:
        """At start, after this instance's first polls: publish them, and wait (at most
        `within` seconds) for the snapshots of the servers other instances poll, so routing
        and the API start with the whole fleet."""
        deadline = time.monotonic() + within
        while True:
            try:
                await self._publish()
                await self._follow()
            except LedgerError as exc:
                log.warning("fleet_snapshot_failed", reason=str(exc))
            waiting = [s for s in self.registry.servers.values() if not s.owned and not s.polled]
            if not waiting or time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(0.1, self.lease_ttl / RENEWALS_PER_TTL))

    async def _publish(self) -> None:
        if not self.share_snapshots:
            return
        for name, state in list(self.registry.servers.items()):
            if not state.owned or not state.polled:
                continue
            if self._published.get(name, -1.0) == state.last_poll:
                continue
            body = snapshot.encode(state)
            if await self.ledger.put_fleet_snapshot(name, poll_lease(name), body, self.clock()):
                self._published[name] = state.last_poll

    async def _follow(self) -> None:
        known = {
            name: self._versions.get(name, 0)
            for name, state in self.registry.servers.items()
            if not state.owned
        }
        if not known:
            return
        for found in await self.ledger.fleet_snapshots(known):
            state = self.registry.servers.get(found.server)
            if state is None or state.owned:
                continue
            try:
                snapshot.apply(self.registry, found.server, found.body)
            except snapshot.SnapshotError as exc:
                log.warning(
                    "fleet_snapshot_unreadable",
                    server=found.server,
                    owner=found.owner,
                    reason=str(exc),
                )
            self._versions[found.server] = found.version

    async def stop(self) -> None:
        """Hand everything over at once: the next renewal of another instance takes it."""
        self._stopping = True
        for task in self._polls:
            task.cancel()
        await asyncio.gather(*self._polls, return_exceptions=True)
        names = [f"{INSTANCE_LEASE}{self.instance_id}", *self.singletons()]
        names.extend(poll_lease(name) for name in self.registry.servers)
        self._singletons = set()
        try:
            await self.ledger.release_leases(names)
        except LedgerError as exc:
            log.warning("lease_release_failed", reason=str(exc))
        else:
            log.info("leases_released", instance=self.instance_id)
