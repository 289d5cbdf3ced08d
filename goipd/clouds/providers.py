"""Cloud providers at run time: one client per configured provider, kept across reloads, and
the work each needs besides sending (balance polling, status queries for overdue delivery
reports, reply polling where replies are fetched rather than pushed; goipd/reports/cloud.py
applies what they return).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import structlog

from goipd.clouds.reply_recovery import CLOCK_SLACK, ReplyRecovery, not_stored
from goipd.config import CloudProviderConfig, ReconcileSettings
from goipd.inbound.store import store_inbound
from goipd.model import LedgerError, Recipient
from goipd.reports.cloud import CloudContext, apply_status
from goipd.upstream.cloud import CloudInbound, CloudProvider, CountsSent, PullsInbound
from goipd.upstream.errors import AMBIGUOUS_REASONS, UpstreamError

log = structlog.get_logger("goipd.clouds.providers")


STATUS_BATCH = 200


TICK = 1.0


UNSTORED_LIMIT = 10_000
"""Fetched replies kept while the ledger refuses them (c123 hands each reply out once)."""


def build_provider(config: CloudProviderConfig, public_url: str | None) -> CloudProvider:
    """The client for one configured provider (imported lazily: each module pulls its own
    dependencies, and an unconfigured provider costs nothing)."""
    from goipd.config import C123Settings, PaasooSettings, SmsgoSettings

    settings = config.settings
    if isinstance(settings, SmsgoSettings):
        from goipd.upstream.smsgo import SmsgoProvider

        report_url = reply_url = None
        if public_url is not None and config.hook_token is not None:
            token = quote(config.hook_token.get_secret_value(), safe="")
            # Token in the path: smsgo appends `?msgid=...` itself.
            report_url = f"{public_url}/hooks/smsgo/report/{token}"
            reply_url = f"{public_url}/hooks/smsgo/reply/{token}"
        return SmsgoProvider(settings, config.secret, report_url=report_url, reply_url=reply_url)
    if isinstance(settings, PaasooSettings):
        from goipd.upstream.paasoo import PaasooProvider

        return PaasooProvider(settings, config.secret)
    if isinstance(settings, C123Settings):
        from goipd.upstream.c123 import C123Provider

        return C123Provider(settings, config.secret)
    raise TypeError(f"no client for provider settings {type(settings).__name__}")


@dataclass
class _Job:
    name: str
    interval: Callable[[], float]
    work: Callable[[], Awaitable[None]]
    next_at: float
    task: asyncio.Task[None] | None = field(default=None)


class CloudFleet:
    """The configured providers and their periodic work."""

    def __init__(
        self,
        ctx: CloudContext,
        reconcile: Callable[[], ReconcileSettings],
        *,
        on_enable: Callable[[str], None] = lambda _name: None,
        disabled_by: Callable[[str], str | None] = lambda _name: None,
        runs_jobs: Callable[[str], bool] = lambda _name: True,
        status_batch: int = STATUS_BATCH,
    ) -> None:
        self.ctx = ctx
        self.status_batch = status_batch
        """Overdue sends asked about per status query job and provider."""
        self.reconcile = reconcile
        self.on_enable = on_enable
        self.disabled_by = disabled_by
        """The refusal code that took a provider out of routing, None while it is in."""
        self.runs_jobs = runs_jobs
        """Whether this instance does the provider's periodic work (goipd/fleet/ha.py): one instance
        of several does, so c123's one reply poll per 10 minutes holds for the whole fleet."""
        self.providers: dict[str, CloudProvider] = {}
        self._configs: dict[str, tuple[CloudProviderConfig, str | None]] = {}
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._recovery: dict[str, ReplyRecovery] = {}
        """Per pulling provider: hours to fetch again after a fetch whose answer was lost."""
        self._unstored: dict[str, deque[CloudInbound]] = {}
        """Replies fetched from a provider that removes them on fetch (c123) which the ledger
        has not taken yet: stored first on the next poll. Memory only (lost on restart)."""
        self._status_cursor: dict[str, tuple[float, int]] = {}
        """(sent_at, id) of the last recipient asked about per provider; the next status
        query starts behind it, and from the oldest again after the last page."""
        self._stopping = False

    def get(self, name: str) -> CloudProvider | None:
        return self.providers.get(name)

    def configure(
        self, configs: Sequence[CloudProviderConfig], public_url: str | None
    ) -> list[CloudProvider]:
        """Adopt a (re)loaded config: unchanged providers keep their client and schedule;
        changed or removed ones are returned, to be closed once sends in flight are done."""
        retired: list[CloudProvider] = []
        wanted = {c.name: c for c in configs}
        for name in list(self.providers):
            if name not in wanted or self._configs[name] != (wanted[name], public_url):
                retired.append(self.providers.pop(name))
                del self._configs[name]
                self.ctx.metrics.remove_provider(name)
                for key in [k for k in self._jobs if k[0] == name]:
                    job = self._jobs.pop(key)
                    if job.task is not None:
                        job.task.cancel()
        now = time.monotonic()
        for name, config in wanted.items():
            if name in self.providers:
                continue
            provider = build_provider(config, public_url)
            self.providers[name] = provider
            self._configs[name] = (config, public_url)
            self._add_jobs(name, provider, config, now)
            self.ctx.metrics.add_provider(name)
        return retired

    def _add_jobs(
        self, name: str, provider: CloudProvider, config: CloudProviderConfig, now: float
    ) -> None:
        balance_every = config.settings.balance_interval
        self._jobs[(name, "balance")] = _Job(
            "balance", lambda: balance_every, lambda: self._poll_balance(name, provider), now
        )
        self._jobs[(name, "status")] = _Job(
            "status",
            lambda: self.reconcile().interval,
            lambda: self._query_overdue(name, provider),
            now + self.reconcile().interval,
        )
        if isinstance(provider, PullsInbound):
            puller = provider
            self._jobs[(name, "inbound")] = _Job(
                "inbound",
                lambda: puller.reply_poll_interval,
                lambda: self._pull_inbound(name, puller),
                now,
            )

    async def run(self) -> None:
        """Start each job when it is due; one run of a job at a time, never overlapping."""
        while not self._stopping:
            now = time.monotonic()
            for (name, _), job in list(self._jobs.items()):
                # Another instance's job stays due here: should this one take over, it runs.
                if job.next_at > now or not self.runs_jobs(name):
                    continue
                if job.task is None or job.task.done():
                    job.next_at = now + job.interval()
                    job.task = asyncio.create_task(self._guarded(job))
            await asyncio.sleep(TICK)

    async def _guarded(self, job: _Job) -> None:
        try:
            await job.work()
        except LedgerError as exc:
            log.error("cloud_job_failed", job=job.name, reason=str(exc))
        except Exception:
            log.exception("cloud_job_crashed", job=job.name)

    async def _poll_balance(self, name: str, provider: CloudProvider) -> None:
        try:
            balance = await provider.balance()
            if isinstance(provider, CountsSent):
                sent = await provider.sent_total()
                self.ctx.metrics.provider_sent_messages.labels(name).set(sent)
        except UpstreamError as exc:
            self._count_error(name, "balance", exc)
            return
        if balance is None:
            return
        self.ctx.metrics.provider_balance.labels(name).set(balance)
        refusal = self.disabled_by(name)
        if balance > 0 and refusal is not None and refusal in provider.balance_clears:
            # The provider answered with our credentials and there is credit again: what
            # disabled it (auth, credit) has been fixed at the provider's end. A frozen account
            # or a forbidden sender can have credit too: those wait for a probe send, or every
            # balance poll would send a burst of messages into the same refusal.
            self.on_enable(name)
            log.info("provider_reenabled", provider=name, by="balance", balance=balance)

    async def _query_overdue(self, name: str, provider: CloudProvider) -> None:
        settings = self.reconcile()
        now = self.ctx.clock()
        overdue = await self.ctx.ledger.awaiting_report(
            name,
            now - settings.report_deadline,
            now - settings.query_after,
            self.status_batch,
            self._status_cursor.pop(name, None),
        )
        # Page on through the window: if the oldest stay pending at the provider for hours,
        # asking only for them would leave every later send unasked until they expire.
        last = overdue[-1] if len(overdue) == self.status_batch else None
        if last is not None and last.sent_at is not None:
            self._status_cursor[name] = (last.sent_at, last.id)
        items = [(r.upstream_id, r.number) for r in overdue if r.upstream_id]
        if not items:
            return
        try:
            statuses = await provider.status(items)
        except UpstreamError as exc:
            self._count_error(name, "status", exc)
            return
        for status in statuses:
            await apply_status(self.ctx, name, status)

    async def _pull_inbound(self, name: str, provider: PullsInbound) -> None:
        unstored = self._unstored.setdefault(name, deque())
        # Leftovers first, and nothing new while they cannot be stored: what is fetched is gone
        # from the provider, so fetching more would only pile up replies goipd may lose.
        if not await self._store_unstored(name, unstored):
            return
        recovery = self._recovery.setdefault(name, ReplyRecovery())
        if recovery.hours:
            await self._fetch_hour_again(name, provider, recovery, unstored)
            return
        started = datetime.fromtimestamp(self.ctx.clock(), UTC)
        try:
            replies = await provider.fetch_inbound()
        except UpstreamError as exc:
            self._count_error(name, "inbound", exc)
            if exc.reason in AMBIGUOUS_REASONS:
                hours = recovery.fetch_lost(started)
                log.warning(
                    "inbound_recovery_planned",
                    provider=name,
                    reason=exc.reason.value,
                    hours=[hour.isoformat() for hour in hours],
                )
            return
        recovery.fetched_whole(started)
        since, recovery.check_next_fetch_since = recovery.check_next_fetch_since, None
        if since is not None and replies:
            try:
                replies = await not_stored(self.ctx.ledger, name, replies, since)
            except LedgerError as exc:
                # These are gone from the provider: better stored twice than not at all.
                log.warning("inbound_duplicates_unchecked", provider=name, reason=str(exc))
        await self._keep(name, unstored, replies)

    async def _fetch_hour_again(
        self,
        name: str,
        provider: PullsInbound,
        recovery: ReplyRecovery,
        unstored: deque[CloudInbound],
    ) -> None:
        hour = recovery.hours[0]
        try:
            replies = await provider.fetch_inbound(hour)
        except UpstreamError as exc:
            self._count_error(name, "inbound", exc)
            dropped = recovery.hour_failed()
            if dropped is not None:
                log.error("inbound_recovery_abandoned", provider=name, hour=dropped.isoformat())
            return
        # A ledger that cannot be read leaves the hour planned: it can be fetched again.
        fresh = await not_stored(self.ctx.ledger, name, replies, hour - CLOCK_SLACK)
        recovery.hour_fetched()
        self.ctx.metrics.cloud_replies_recovered.labels(name).inc(len(fresh))
        log.info(
            "inbound_recovered",
            provider=name,
            hour=hour.isoformat(),
            fetched=len(replies),
            new=len(fresh),
        )
        await self._keep(name, unstored, fresh)

    async def _keep(
        self, name: str, unstored: deque[CloudInbound], replies: Sequence[CloudInbound]
    ) -> None:
        unstored.extend(replies)
        dropped = len(unstored) - UNSTORED_LIMIT
        for _ in range(max(dropped, 0)):
            unstored.popleft()
        if dropped > 0:
            log.error("inbound_dropped", provider=name, replies=dropped, reason="too many unstored")
        await self._store_unstored(name, unstored)

    async def _store_unstored(self, name: str, unstored: deque[CloudInbound]) -> bool:
        """Store the kept replies in order; False (the rest kept) if the ledger refuses one."""
        try:
            while unstored:
                await store_inbound(self.ctx, name, unstored[0])
                unstored.popleft()
        except LedgerError as exc:
            log.error("inbound_store_failed", provider=name, kept=len(unstored), reason=str(exc))
            return False
        finally:
            self.ctx.metrics.cloud_replies_pending.labels(name).set(len(unstored))
        return True

    async def cancel_handed_over(self, recipients: Sequence[Recipient]) -> list[int]:
        """Ask each provider holding one of these scheduled sends to cancel it; returns the
        ids of the recipients it confirmed (one provider id may cover a whole batch)."""
        batches: dict[tuple[str, str], list[int]] = {}
        for r in recipients:
            if r.route and r.upstream_id:
                batches.setdefault((r.route, r.upstream_id), []).append(r.id)
        cancelled: list[int] = []
        for (name, upstream_id), ids in batches.items():
            provider = self.providers.get(name)
            if provider is None:
                continue
            try:
                done = await provider.cancel(upstream_id)
            except UpstreamError as exc:
                self._count_error(name, "cancel", exc)
                continue
            log.info(
                "scheduled_send_cancelled" if done else "scheduled_send_not_cancelled",
                provider=name,
                upstream_id=upstream_id,
                recipients=len(ids),
            )
            if done:
                cancelled.extend(ids)
        return cancelled

    def _count_error(self, name: str, operation: str, exc: UpstreamError) -> None:
        self.ctx.metrics.provider_errors.labels(name, operation, exc.reason.value).inc()
        log.warning(
            "provider_call_failed",
            provider=name,
            operation=operation,
            reason=exc.reason.value,
            detail=exc.detail,
        )

    async def stop(self) -> None:
        self._stopping = True
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self.providers.values()))
        self.providers.clear()
