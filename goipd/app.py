"""Builds and wires everything; start-up and shut-down order live here and nowhere else."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

import structlog
from aiohttp import web

from goipd.accept.alerts import AlertRelay
from goipd.callbacks.sender import StatusCallbackSender
from goipd.clouds.providers import CloudFleet
from goipd.config import ConfigError, Settings, load_settings
from goipd.dispatch.disables import ProviderDisables
from goipd.dispatch.dispatcher import Dispatcher
from goipd.dispatch.routing import Router
from goipd.fleet.actions import LineActions
from goipd.fleet.balances import BalanceChecker
from goipd.fleet.collector import FleetCollector
from goipd.fleet.devices import DevicePoller
from goipd.fleet.ha import CLOUD_LEASE, FORWARD_LEASE, Coordinator, default_instance_id
from goipd.fleet.poller import FleetPoller
from goipd.fleet.quarantine import AutoQuarantines, ManualQuarantines
from goipd.fleet.registry import LineRegistry
from goipd.fleet.relays import Relays
from goipd.fleet.remediation import Remediator
from goipd.fleet.upkeep_metrics import UpkeepCollector
from goipd.inbound.forwarder import InboundForwarder, url_secrets
from goipd.inbound.inbox import InboxReader
from goipd.ledger.open import open_ledger
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError, State
from goipd.reports.cloud import CloudContext, HeldReports
from goipd.reports.goip import GoipContext
from goipd.reports.reconcile import Reconciler
from goipd.runtime.logs import scrubber
from goipd.runtime.netutil import bound_port
from goipd.runtime.sdnotify import Notifier, watchdog_loop
from goipd.runtime.supervise import supervised
from goipd.web import server as web_server
from goipd.web.context import ApiContext

log = structlog.get_logger("goipd")
QUEUE_METRICS_INTERVAL = 5.0


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = LineRegistry()
        self.metrics = Metrics()
        self.fleet_collector = FleetCollector(self.registry, self.metrics)
        self.poller = FleetPoller(self.registry, self.metrics, settings.polling)
        self.ledger = open_ledger(
            settings,
            settings.ha.instance_id
            or default_instance_id(shared=settings.storage.sqlite_path is None),
        )
        self.coordinator = Coordinator(
            self.ledger,
            self.registry,
            self.metrics,
            settings.lease_ttl,
            self.poller.poll,
            singletons=lambda: [
                FORWARD_LEASE,
                *(f"{CLOUD_LEASE}{p.name}" for p in self.settings.providers),
            ],
            share_snapshots=settings.storage.sqlite_path is None,
        )
        self.poller.may_poll = self.coordinator.may_poll
        self.router = Router(
            self.registry,
            settings.routing,
            settings.routes,
            {s.name: s for s in settings.servers},
            [p.name for p in settings.providers],
            # One instance probes a disabled provider for all (goipd/dispatch/disables.py).
            probes=lambda name: self.coordinator.holds(f"{CLOUD_LEASE}{name}"),
        )
        self.cloud_ctx = CloudContext(
            self.ledger, self.metrics, lambda: self.settings.inbound.forward_urls
        )
        self.clouds = CloudFleet(
            self.cloud_ctx,
            lambda: self.settings.reconcile,
            on_enable=self._enable_provider,
            disabled_by=self.router.disabled_by,
            runs_jobs=lambda name: self.coordinator.holds(f"{CLOUD_LEASE}{name}"),
        )
        self.held_reports = HeldReports(self.cloud_ctx, self.ledger)
        self.dispatcher = Dispatcher(
            self.ledger,
            self.router,
            self.registry,
            self.poller.clients.get,
            settings.routing,
            self.metrics,
            clouds=self.clouds.get,
            schedule_ahead=self._schedule_ahead,
            # One SQLite file has one instance, whose router already keeps the exact rate.
            shared_line_rate=settings.storage.sqlite_path is None,
        )
        self.hooks = GoipContext(
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
            self.hooks,
            self.poller.clients.get,
            lambda: self.settings.reconcile,
            self.ledger,
            owned=lambda: [name for name, s in self.registry.servers.items() if s.owned],
        )
        self.dispatcher.unconfirmed = self.reconciler.unconfirmed
        self.inbox = InboxReader(
            self.hooks,
            lambda: self.poller.servers,
            ready=self._reads_inbox,
        )
        self.dispatcher.held = self._held_servers
        self.hooks.quarantines = AutoQuarantines(self.ledger, self.registry, self.dispatcher.wake)
        self.quarantines = ManualQuarantines(
            self.ledger, self.registry, self.dispatcher.wake, self.hooks.quarantines
        )
        self.provider_disables = ProviderDisables(
            self.ledger, self.router, self.metrics, self.dispatcher.wake
        )
        self.forwarder = InboundForwarder(
            self.ledger,
            lambda: self.settings.inbound,
            runs=lambda: self.coordinator.holds(FORWARD_LEASE),
        )
        self.relays = Relays()
        self.metrics.registry.register(UpkeepCollector(self.registry))
        self.balances = BalanceChecker(
            self.ledger,
            self.registry,
            lambda: self.settings,
            self.metrics,
            self.relays.ussd.get,
            reads=self._reads_inbox,
        )
        self.devices = DevicePoller(self.registry, self.metrics, polls=self._reads_inbox)
        self.actions = LineActions(
            self.ledger, self.metrics, self.relays.commands.get, self.relays.ussd.get
        )
        self.remediator = Remediator(
            self.ledger,
            self.registry,
            self.actions,
            lambda: self.settings.remediation,
            self.metrics,
            acts_on=self._reads_inbox,
            release_quarantine=self.hooks.quarantines.release,
        )
        # Every instance delivers status callbacks: events are claimed in the ledger.
        self.callbacks = StatusCallbackSender(self.ledger, lambda: self.settings, self.metrics)
        self.api = ApiContext(
            ledger=self.ledger,
            settings=lambda: self.settings.api,
            server_names=lambda: self.poller.servers.keys(),
            cloud_names=lambda: self.router.clouds,
            metrics=self.metrics,
            wake_dispatch=self.dispatcher.wake,
            clock=time.time,
            cancel_handed_over=self.clouds.cancel_handed_over,
            caller_defaults=lambda client: self.settings.api_clients.get(client),
            private_callbacks=lambda: self.settings.callbacks.allow_private,
        )
        self.alert_relay = AlertRelay(settings.alerting, self.metrics, self.ledger)
        self.web_app = web_server.build_app(
            lambda: self.settings,
            lambda: self.stopping,
            web_server.Parts(
                probed=self,
                registry=self.registry,
                api=self.api,
                alert_relay=self.alert_relay,
                goip=self.hooks,
                quarantines=self.quarantines,
                cloud=self.cloud_ctx,
                held_reports=self.held_reports,
                provider_hook_tokens=lambda: {
                    p.name: p.hook_token for p in self.settings.providers
                },
                actions=self.actions,
                balances=self.balances,
            ),
        )
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port: int | None = None
        self.stopping = False
        self.stopped = asyncio.Event()
        self.queue_counts: dict[State, int] = {}
        self.notifier = Notifier.from_env(unset_environment=True)

    def _reads_inbox(self, server: str) -> bool:
        """This instance polls the server, and its last poll reached it: it reads the server's
        inbox and balances, and acts on its stuck lines."""
        state = self.registry.servers.get(server)
        return state is not None and state.owned and state.up and self.coordinator.may_poll(server)

    def _held_servers(self) -> set[str]:
        """Servers dispatch leaves alone now: sends being verified, or a stalled engine (on
        any instance: the polling one's snapshot carries the stall)."""
        return set(self.reconciler.verifying) | self.reconciler.stalls.stalled()

    async def start(self) -> None:
        scrubber.set_secrets(_secrets(self.settings))
        for warning in (*self.settings.warnings, *_provider_warnings(self.settings)):
            log.warning("config_warning", detail=warning)
        await self.ledger.open()
        # Before the first poll, so no line is routed before its quarantines are known.
        await self.quarantines.sync()
        self.poller.configure({s.name: s for s in self.settings.servers})
        self.relays.configure(
            {s.name: s for s in self.settings.servers}, self.settings.balances.answer_timeout
        )
        self.devices.configure({s.name: s for s in self.settings.servers})
        # Which servers this instance polls, and the others' snapshots, before the first poll.
        log.info(
            "ha_instance",
            instance=self.ledger.instance_id,
            lease_ttl=self.settings.lease_ttl,
        )
        await self.coordinator.tick()
        # Renewals from here on: the first poll round and settling a previous process's claims
        # can take longer than a lease, and neither the poll leases nor this instance's
        # heartbeat may run out meanwhile (another instance would poll too, or settle claims
        # this one is settling).
        self._coordinator_task = self._supervise("ha", self.coordinator.run)
        self.clouds.configure(self.settings.providers, self.settings.http.public_url)
        # Before dispatch, so no send goes to a provider this goipd or another disabled.
        await self.provider_disables.sync()
        self._runner = web.AppRunner(self.web_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        self.port = bound_port(site)
        log.info(
            "http_listening",
            listen=f"{self.settings.http.host}:{self.port}",
            servers=len(self.settings.servers),
        )
        await self.poller.first_round()
        # Balances the ledger holds are shown from the first request on, not a sync later.
        await self.balances.sync()
        await self.coordinator.first_round(within=2 * self.settings.lease_ttl)
        self.poller.start()
        # Claims left by a previous process are settled before the dispatcher may resend.
        await self.reconciler.startup()
        self._tasks = [
            self._supervise("dispatch", self.dispatcher.run),
            self._supervise("forward", self.forwarder.run),
            self._supervise("callbacks", self.callbacks.run),
            self._supervise("clouds", self.clouds.run),
            self._supervise("held_reports", self.held_reports.run),
            self._supervise("inbox", self.inbox.run),
            self._supervise("balances", self.balances.run),
            self._supervise("devices", self.devices.run),
            self._supervise("remediation", self.remediator.run),
            self._supervise("maintenance", self._maintenance),
            self._coordinator_task,
            self._supervise("watchdog", lambda: watchdog_loop(self.notifier)),
        ]
        await self.update_queue_metrics()
        self.notifier.ready(self.status_line())
        log.info(
            "daemon_ready",
            servers=len(self.registry.servers),
            lines=sum(1 for _ in self.registry.lines()),
        )

    def _supervise(
        self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        return asyncio.create_task(
            supervised(name, factory, self.metrics.task_restarts, lambda: self.stopping), name=name
        )

    def _schedule_ahead(self, name: str) -> float:
        config = next((p for p in self.settings.providers if p.name == name), None)
        return float(getattr(config.settings, "schedule_ahead", 0.0)) if config else 0.0

    def _enable_provider(self, name: str) -> None:
        self.router.enable_cloud(name)
        self.metrics.provider_disabled.labels(name).set(0)
        self.dispatcher.wake()

    @property
    def ready(self) -> bool:
        return self.registry.first_round_done

    async def _maintenance(self) -> None:
        """Hand-overs whose time has passed, queue gauges and manual quarantines every few
        seconds; reconciliation on its own interval."""
        next_reconcile = time.monotonic() + self.settings.reconcile.interval
        while True:
            await asyncio.sleep(QUEUE_METRICS_INTERVAL)
            try:
                # Hand-overs never reported on would otherwise stay `submitted` for good.
                settled = await self.ledger.settle_handed_over(time.time())
                if settled:
                    log.info("handovers_settled", recipients=settled)
                await self.update_queue_metrics()
                # Quarantines and provider disables of another goipd sharing a PostgreSQL ledger.
                await self.quarantines.sync()
                await self.provider_disables.sync()
                self.notifier.status(self.status_line())
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + self.settings.reconcile.interval
                    await self.reconciler.run_once()
            except LedgerError as exc:
                log.error("maintenance_failed", reason=str(exc))

    async def update_queue_metrics(self) -> None:
        counts = self.queue_counts = await self.ledger.counts()
        for state in State:
            self.metrics.queue_messages.labels(state.value).set(counts.get(state, 0))
        oldest = await self.ledger.oldest_pending(time.time())
        self.metrics.queue_oldest_age.set(max(time.time() - oldest, 0.0) if oldest else 0.0)

    def status_line(self) -> str:
        """The short fleet summary systemd shows in `systemctl status`."""
        servers = self.registry.servers.values()
        lines = [line for line in self.registry.lines() if not line.gone]
        queued = self.queue_counts.get(State.QUEUED, 0)
        return (
            f"{sum(1 for s in servers if s.up)}/{len(self.registry.servers)} servers up, "
            f"{sum(1 for line in lines if line.registered)}/{len(lines)} lines registered, "
            f"{queued} queued"
        )

    async def reload(self) -> bool:
        """Re-read the config file. Servers, routes, tokens and tunables change in place;
        queued and in-flight messages are untouched. An invalid file changes nothing."""
        if self.settings.source is None:
            return False
        self.notifier.reloading()
        try:
            new = load_settings(self.settings.source)
        except ConfigError as exc:
            log.error("config_reload_rejected", problems=exc.lines())
            self.notifier.ready(self.status_line())
            return False
        for key, old_value, new_value in (
            ("http.listen", self.settings.http.listen, new.http.listen),
            ("storage.url", self.settings.storage.url, new.storage.url),
            ("ha", self.settings.ha, new.ha),
        ):
            if old_value != new_value:
                log.warning("config_reload_needs_restart", key=key)
        new = replace(
            new,
            http=new.http.model_copy(update={"listen": self.settings.http.listen}),
            storage=self.settings.storage,
            ha=self.settings.ha,
        )
        self.settings = new
        scrubber.set_secrets(_secrets(new))
        servers = {s.name: s for s in new.servers}
        old_timeouts = [p.settings.timeout for p in self.settings.providers]
        retired_servers = self.poller.configure(servers)
        retired_relays = self.relays.configure(servers, new.balances.answer_timeout)
        self.balances.reload()
        self.devices.configure(servers)
        await self.coordinator.tick()  # new servers: polled here only once the lease is ours
        retired_clouds = self.clouds.configure(new.providers, new.http.public_url)
        providers = [p.name for p in new.providers]
        self.router.reconfigure(new.routing, new.routes, servers, providers)
        for name in providers:
            self.metrics.provider_disabled.labels(name).set(0)
        await self.provider_disables.reloaded()
        self.dispatcher.settings = new.routing
        self.alert_relay.configure(new.alerting)
        # Sends in flight may still use a retired client: close it once they are surely done.
        timeouts = [c.timeout for c in retired_servers]
        if retired_clouds:
            timeouts.extend(old_timeouts)
        grace = max(timeouts, default=0.0) * 2 + 1.0
        retired: list[_Closable] = [*retired_servers, *retired_clouds]
        if retired:
            self._tasks.append(asyncio.create_task(_close_later(retired, grace)))
        if retired_relays:
            # A USSD answer or a command may take a couple of minutes.
            relays_grace = new.balances.answer_timeout + 60.0
            self._tasks.append(asyncio.create_task(_close_later([*retired_relays], relays_grace)))
        log.info(
            "config_reloaded",
            servers=len(servers),
            providers=len(providers),
            routes=len(new.routes),
            retired_clients=len(retired),
        )
        self.notifier.ready(self.status_line())
        return True

    async def stop(self, grace: float = 10.0) -> None:
        log.info("daemon_stopping")
        self.stopping = True
        self.notifier.stopping()
        deadline = time.monotonic() + grace
        await self.dispatcher.stop(deadline)
        await self.reconciler.stop()
        await self.clouds.stop()
        await self.forwarder.stop()
        await self.callbacks.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poller.stop()
        await self.relays.close()
        await self.devices.close()
        await self.coordinator.stop()
        await self.provider_disables.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ledger.close()
        self.stopped.set()
        log.info("daemon_stopped")


class _Closable(Protocol):
    async def close(self) -> None: ...


async def _close_later(clients: list[_Closable], delay: float) -> None:
    await asyncio.sleep(delay)
    await asyncio.gather(*(client.close() for client in clients))


def _secrets(settings: Settings) -> list[str]:
    values = [t.get_secret_value() for t in settings.api_tokens]
    for server in settings.servers:
        values.append(server.password.get_secret_value())
        if server.hook_token is not None:
            values.append(server.hook_token.get_secret_value())
        values.extend(device.password.get_secret_value() for device in server.devices)
    for provider in settings.providers:
        values.append(provider.secret.get_secret_value())
        if provider.hook_token is not None:
            values.append(provider.hook_token.get_secret_value())
    for url in settings.inbound.forward_urls:
        values.extend(url_secrets(url))
    for client in settings.api_clients.values():
        values.append(client.signing_secret.get_secret_value())
        if client.status_url is not None:
            values.extend(url_secrets(client.status_url))
    if settings.callback_secret is not None:
        values.append(settings.callback_secret.get_secret_value())
    return values


def _provider_warnings(settings: Settings) -> list[str]:
    """Configurations that work but lose something an operator would want to know about."""
    warnings = []
    for provider in settings.providers:
        if provider.name == "c123":
            continue  # replies are fetched and there are no delivery reports: nothing pushed
        if provider.hook_token is None:
            warnings.append(
                f"providers.{provider.name}: no hook_token, so its delivery reports "
                "(and smsgo replies) are refused; sends stay `sent` until a status query"
            )
        elif provider.name == "smsgo" and settings.http.public_url is None:
            warnings.append(
                "providers.smsgo: http.public_url is not set, so smsgo is not told where to "
                "push delivery reports and replies"
            )
    return warnings


async def run_daemon(settings: Settings) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start()
    except (OSError, LedgerError, ConfigError) as exc:
        log.error("daemon_start_failed", detail=str(exc))
        await daemon.stop()
        return 1
    await stop_requested.wait()
    await daemon.stop()
    return 0
