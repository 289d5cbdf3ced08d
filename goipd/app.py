"""Builds and wires everything; start-up and shut-down order live here and nowhere else."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from goipd import api, hooks
from goipd.config import Settings
from goipd.dispatch import Dispatcher
from goipd.fleet.poller import FleetPoller
from goipd.fleet.registry import LineRegistry
from goipd.forwarder import InboundForwarder
from goipd.ledger.base import Ledger, LedgerError, State
from goipd.logs import scrubber
from goipd.metrics import Metrics
from goipd.problems import problem_middleware, problem_response
from goipd.reconcile import Reconciler
from goipd.routing import Router

log = structlog.get_logger("goipd")
DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
QUEUE_METRICS_INTERVAL = 5.0


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = LineRegistry()
        self.metrics = Metrics(self.registry)
        self.poller = FleetPoller(self.registry, self.metrics, settings.polling)
        self.ledger = open_ledger(settings)
        self.router = Router(
            self.registry,
            settings.routing,
            settings.routes,
            {s.name: s for s in settings.servers},
        )
        self.dispatcher = Dispatcher(
            self.ledger,
            self.router,
            self.registry,
            self.poller.clients.get,
            settings.routing,
            self.metrics,
        )
        self.hooks = hooks.HookContext(
            servers=lambda: self.poller.servers,
            ledger=self.ledger,
            registry=self.registry,
            metrics=self.metrics,
            routing=lambda: self.settings.routing,
            forward_urls=lambda: self.settings.inbound.forward_urls,
            wake_dispatch=self.dispatcher.wake,
            clock=time.time,
        )
        self.reconciler = Reconciler(
            self.hooks, self.poller.clients.get, lambda: self.settings.reconcile
        )
        self.forwarder = InboundForwarder(self.ledger, lambda: self.settings.inbound)
        self.api = api.ApiContext(
            ledger=self.ledger,
            settings=lambda: self.settings.api,
            server_names=lambda: self.poller.servers.keys(),
            cloud_names=lambda: self.router.clouds,
            metrics=self.metrics,
            wake_dispatch=self.dispatcher.wake,
            clock=time.time,
        )
        self.web_app = self._build_web_app()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port: int | None = None
        self.stopped = asyncio.Event()

    def _build_web_app(self) -> web.Application:
        app = web.Application(
            middlewares=[problem_middleware, api.token_middleware(self.settings.api_tokens)],
            client_max_size=self.settings.http.max_body_bytes,
        )
        app[DAEMON_KEY] = self
        app[api.REGISTRY_KEY] = self.registry
        app[api.API_KEY] = self.api
        app[hooks.HOOKS_KEY] = self.hooks
        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        api.add_routes(app)
        hooks.add_routes(app)
        return app

    async def start(self) -> None:
        scrubber.set_secrets(_secrets(self.settings))
        for warning in self.settings.warnings:
            log.warning("config_warning", detail=warning)
        await self.ledger.open()
        self.poller.configure({s.name: s for s in self.settings.servers})
        self._runner = web.AppRunner(self.web_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        self.port = _bound_port(site)
        log.info(
            "http_listening",
            listen=f"{self.settings.http.host}:{self.port}",
            servers=len(self.settings.servers),
        )
        await self.poller.first_round()
        self.poller.start()
        # Claims left by a previous process are settled before the dispatcher may resend.
        await self.reconciler.startup()
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dispatch"),
            asyncio.create_task(self.forwarder.run(), name="forward"),
            asyncio.create_task(self._maintenance(), name="maintenance"),
        ]
        log.info(
            "daemon_ready",
            servers=len(self.registry.servers),
            lines=sum(1 for _ in self.registry.lines()),
        )

    @property
    def ready(self) -> bool:
        return self.registry.first_round_done

    async def _maintenance(self) -> None:
        """Queue gauges every few seconds; reconciliation on its own interval."""
        next_reconcile = time.monotonic() + self.settings.reconcile.interval
        while True:
            await asyncio.sleep(QUEUE_METRICS_INTERVAL)
            try:
                await self.update_queue_metrics()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + self.settings.reconcile.interval
                    await self.reconciler.run_once()
            except LedgerError as exc:
                log.error("maintenance_failed", reason=str(exc))

    async def update_queue_metrics(self) -> None:
        counts = await self.ledger.counts()
        for state in State:
            self.metrics.queue_messages.labels(state.value).set(counts.get(state, 0))
        oldest = await self.ledger.oldest_pending()
        self.metrics.queue_oldest_age.set(max(time.time() - oldest, 0.0) if oldest else 0.0)

    async def stop(self, grace: float = 10.0) -> None:
        log.info("daemon_stopping")
        deadline = time.monotonic() + grace
        await self.dispatcher.stop(deadline)
        await self.forwarder.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poller.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ledger.close()
        self.stopped.set()
        log.info("daemon_stopped")


def open_ledger(settings: Settings) -> Ledger:
    path = settings.storage.sqlite_path
    if path is None:
        raise LedgerError("only sqlite:/// storage is supported by this build")
    from goipd.ledger.sqlite import SqliteLedger

    return SqliteLedger(path)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    sockets: Any = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


def _secrets(settings: Settings) -> list[str]:
    values = [t.get_secret_value() for t in settings.api_tokens]
    for server in settings.servers:
        values.append(server.password.get_secret_value())
        if server.hook_token is not None:
            values.append(server.hook_token.get_secret_value())
    return values


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[DAEMON_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    if not daemon.ready:
        return problem_response(
            503, "first poll round of the SMS Servers is not finished", title="Not ready"
        )
    return web.json_response({"status": "ready"})


async def run_daemon(settings: Settings) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        await daemon.start()
    except (OSError, LedgerError) as exc:
        log.error("daemon_start_failed", detail=str(exc))
        await daemon.stop()
        return 1
    await stop_requested.wait()
    await daemon.stop()
    return 0
