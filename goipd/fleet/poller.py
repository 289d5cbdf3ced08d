"""Polls `querylines` on every SMS Server, each on its own interval, concurrently.

APScheduler owns the timing (interval, no overlapping runs of one server); this module owns
where in the interval each server is polled (spread evenly, plus polling.jitter per run), what a
poll does, and the exponential backoff while a server keeps failing: scheduled runs inside the
backoff window are skipped, so a dead server costs nothing but a counter.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from goipd.config import PollingSettings, Server
from goipd.fleet.registry import LineRegistry
from goipd.metrics.catalog import Metrics
from goipd.upstream.errors import ErrorReason, UpstreamError
from goipd.upstream.goip import SETUP_FIXES, GoipClient

log = structlog.get_logger("goipd.poller")
GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


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
        self.may_poll: Callable[[str], bool] = lambda _name: True
        """Whether this instance holds the server's polling lease now (goipd/fleet/ha.py)."""
        self.servers: dict[str, Server] = {}
        self.clients: dict[str, GoipClient] = {}
        self._not_before: dict[str, float] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._rng = random.Random()
        self._placed = 0
        self._stopped = False
        self._warm_up: asyncio.Task[None] | None = None
        self._frozen = False

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
                name,
                server.url,
                server.username,
                server.password,
                server.timeout,
                send_timeout=server.send_timeout,
                escape_text=server.escape_text,
                on_diagnostics=functools.partial(self._diagnostics, name),
            )
            if self._scheduler is not None:
                self._schedule(server)
        self.metrics.add_servers(servers)
        return retired

    def _diagnostics(self, server: str, api: str, diagnostics: tuple[str, ...]) -> None:
        """PHP warnings before a reply's JSON: a setup problem of the server, logged once with
        its fix and exported until goipd restarts (the warning shows in every reply)."""
        for key in self.registry.note_setup_problems(server, diagnostics):
            self.metrics.server_setup_problem.labels(server, key).set(1)
            log.warning(
                "server_setup_problem",
                server=server,
                api=api,
                problem=key,
                warning=self.registry.servers[server].setup_problems[key],
                fix=SETUP_FIXES[key],
            )

    async def first_round(self) -> None:
        await asyncio.gather(*(self.poll(name) for name in list(self.servers)))
        # Every line is new to the /metrics text cache now: render it once in the background
        # (in slices, ~0.3 s of CPU for 32,000 lines) so that no scrape, the first included,
        # formats more than what changed since the one before.
        self._warm_up = asyncio.create_task(self._warm_up_metrics(), name="metrics-warm-up")

    async def _warm_up_metrics(self) -> None:
        try:
            await self.metrics.render_async()
        except Exception:
            log.exception("metrics_warm_up_failed")  # the first scrape renders it all instead
        # What exists now (lines, clients, schedules, the metrics text) lives as long as the
        # process. Out of the cyclic GC's reach, a full collection no longer walks it: with
        # 1,000 servers that walk held the event loop 110-150 ms each time one ran, which is
        # what the slowest API requests waited for. stop() gives it back to the GC.
        gc.freeze()
        self._frozen = True

    def start(self) -> None:
        self._stopped = False
        self._scheduler = AsyncIOScheduler()
        for server in self.servers.values():
            self._schedule(server)
        self._scheduler.start()

    async def stop(self) -> None:
        self._stopped = True
        if self._warm_up is not None:
            self._warm_up.cancel()
            await asyncio.gather(self._warm_up, return_exceptions=True)
            self._warm_up = None
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    def _schedule(self, server: Server) -> None:
        assert self._scheduler is not None
        # Each server's runs are offset by its own share of the interval, so the servers are
        # polled evenly over it rather than in one burst after the first round. Successive
        # multiples of the golden ratio (mod 1) spread any number of servers evenly, also
        # those a reload adds later.
        self._placed += 1
        phase = 1.0 - (self._placed * GOLDEN_RATIO_CONJUGATE) % 1.0  # in (0, 1]
        first = datetime.now().astimezone() + timedelta(seconds=server.poll_interval * phase)
        self._scheduler.add_job(
            self._scheduled_poll,
            IntervalTrigger(seconds=server.poll_interval, start_date=first),
            args=[server.name],
            id=_job_id(server.name),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(server.poll_interval)),
        )

    async def _scheduled_poll(self, name: str) -> None:
        server = self.servers.get(name)
        if server is not None and self.polling.jitter > 0:
            # A random delay of this run alone. APScheduler's own trigger jitter is added to
            # the previous, already delayed run time: the delays accumulated and polls came
            # every interval x (1 + jitter/2) on average.
            try:
                await asyncio.sleep(
                    self._rng.uniform(0, server.poll_interval * self.polling.jitter)
                )
            except asyncio.CancelledError:
                if self._stopped:
                    return  # goipd stopped while this run waited: nothing left to do
                raise
        if not self._stopped:
            await self.poll(name)

    async def poll(self, name: str) -> None:
        server, client = self.servers.get(name), self.clients.get(name)
        state = self.registry.servers.get(name)
        if (
            server is None
            or client is None
            or (state is not None and not state.owned)
            or not self.may_poll(name)
        ):
            return  # not configured any more, or polled by another instance (goipd/fleet/ha.py)
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
