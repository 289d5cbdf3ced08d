"""Polls `querylines` on every SMS Server, each on its own interval, concurrently.

APScheduler owns the timing (interval, jitter, no overlapping runs of one server); this module
owns what a poll does, and the exponential backoff while a server keeps failing: scheduled runs
inside the backoff window are skipped, so a dead server costs nothing but a counter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from goipd.config import PollingSettings, Server
from goipd.fleet.registry import LineRegistry
from goipd.metrics import Metrics
from goipd.upstream.errors import ErrorReason, UpstreamError
from goipd.upstream.goip import GoipClient

log = structlog.get_logger("goipd.poller")


class FleetPoller:
    def __init__(
        self,
        registry: LineRegistry,
        metrics: Metrics,
        polling: PollingSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.polling = polling
        self.clock = clock
        self.servers: dict[str, Server] = {}
        self.clients: dict[str, GoipClient] = {}
        self._not_before: dict[str, float] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._rng = random.Random()

    def configure(self, servers: Mapping[str, Server]) -> list[GoipClient]:
        """Adopt a new server list; returns the clients of removed or changed servers, which the
        caller closes once nothing uses them any more."""
        retired: list[GoipClient] = []
        for name in list(self.servers):
            if servers.get(name) != self.servers[name]:
                retired.append(self.clients.pop(name))
                del self.servers[name]
                self._not_before.pop(name, None)
                if self._scheduler is not None:
                    self._scheduler.remove_job(_job_id(name))
                if name not in servers:
                    self.metrics.remove_server(name)
        self.registry.set_servers(servers)
        for name, server in servers.items():
            if name in self.servers:
                continue
            self.servers[name] = server
            self.clients[name] = GoipClient(
                name, server.url, server.username, server.password, server.timeout
            )
            if self._scheduler is not None:
                self._schedule(server)
        self.metrics.add_servers(servers)
        return retired

    async def first_round(self) -> None:
        await asyncio.gather(*(self.poll(name) for name in list(self.servers)))

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler()
        for server in self.servers.values():
            self._schedule(server)
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    def _schedule(self, server: Server) -> None:
        assert self._scheduler is not None
        jitter = server.poll_interval * self.polling.jitter
        first = datetime.now().astimezone() + timedelta(
            seconds=server.poll_interval + self._rng.uniform(0, jitter)
        )
        self._scheduler.add_job(
            self.poll,
            IntervalTrigger(seconds=server.poll_interval, start_date=first, jitter=jitter or None),
            args=[server.name],
            id=_job_id(server.name),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(server.poll_interval)),
        )

    async def poll(self, name: str) -> None:
        server, client = self.servers.get(name), self.clients.get(name)
        if server is None or client is None:
            return
        now = self.clock()
        if now < self._not_before.get(name, 0.0):
            self.metrics.poll_skipped.labels(name).inc()
            return
        started = time.monotonic()
        try:
            # The client's own timeout covers the HTTP exchange; this bound also covers parsing
            # and anything else a pathological reply could make slow.
            async with asyncio.timeout(server.timeout * 1.5):
                statuses = await client.query_lines()
        except UpstreamError as exc:
            self._failed(server, exc.reason, exc.detail, started)
        except TimeoutError:
            self._failed(server, ErrorReason.TIMEOUT, "querylines: poll deadline exceeded", started)
        else:
            self.metrics.poll_duration.labels(name).observe(time.monotonic() - started)
            self._not_before.pop(name, None)
            self.registry.apply_poll(name, statuses, self.clock())

    def _failed(self, server: Server, reason: ErrorReason, detail: str, started: float) -> None:
        self.metrics.poll_duration.labels(server.name).observe(time.monotonic() - started)
        self.metrics.poll_errors.labels(server.name, reason.value).inc()
        self.registry.apply_failure(server.name, reason, detail, self.clock())
        failures = self.registry.servers[server.name].consecutive_failures
        if failures >= 2:
            # First failure: poll again at the normal interval (a blip). After that, double.
            backoff = min(server.poll_interval * 2 ** (failures - 1), self.polling.backoff_max)
            # Scheduled runs land within ±jitter; back off slightly less so the run after the
            # window is not skipped by a hair.
            self._not_before[server.name] = self.clock() + backoff - server.poll_interval / 2
            log.info("poll_backoff", server=server.name, failures=failures, seconds=backoff)


def _job_id(name: str) -> str:
    return f"poll:{name}"
