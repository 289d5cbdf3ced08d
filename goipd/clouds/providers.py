"""Cloud providers at run time: one client per configured provider, kept across reloads, and
the work each needs besides sending (balance polling, status queries for overdue delivery
reports, reply polling where replies are fetched rather than pushed; goipd/reports/cloud.py
applies what they return).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from urllib.parse import quote

import structlog

from goipd.clouds.reply_recovery import (
    CLOCK_SLACK,
    ReplyRecovery,
    Superseded,
    load,
    not_stored,
    save,
)
from goipd.config import CloudProviderConfig, ReconcileSettings
from goipd.inbound.store import store_inbound
from goipd.ledger.base import ProviderDocuments
from goipd.model import LedgerError, Recipient
from goipd.reports.cloud import CloudContext, apply_status
from goipd.upstream.cloud import CloudInbound, CloudProvider, CountsSent, PullsInbound
from goipd.upstream.errors import AMBIGUOUS_REASONS, UpstreamError

log = structlog.get_logger("goipd.clouds.providers")


STATUS_BATCH = 200


TICK = 1.0


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
        documents: ProviderDocuments | None = None,
    ) -> None:
        self.ctx = ctx
        self.documents = documents if documents is not None else cast(ProviderDocuments, ctx.ledger)
        """Where reply polling keeps its plan (reply_recovery.py); by default the ledger of
        `ctx`, which in goipd is the whole ledger."""
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
            # At 0 from the start, so increase() sees the first hour given up.
            self.ctx.metrics.cloud_reply_hours_abandoned.labels(name)
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
        """One reply poll. Its plan is read from the ledger first and written there at each
        change (goipd/clouds/reply_recovery.py): a restarted goipd, or the instance that took
        the provider's lease over, goes on where the last poll stopped."""
        try:
            await self._poll_replies(name, provider)
        except Superseded:
            log.warning("inbound_state_superseded", provider=name)

    async def _poll_replies(self, name: str, provider: PullsInbound) -> None:
        now = self.ctx.clock()
        recovery = await load(self.documents, name, datetime.fromtimestamp(now, UTC))
        if recovery.fetching is not None:
            # A fetch announced and never finished: the process died, or the ledger refused its
            # replies. They are gone from the provider: its hours are fetched again.
            started = recovery.fetching
            hours = recovery.fetch_lost(started)
            await save(self.documents, name, recovery, now)
            log.warning(
                "inbound_recovery_planned",
                provider=name,
                reason="unfinished",
                started=started.isoformat(),
                hours=[hour.isoformat() for hour in hours],
            )
        if recovery.hours:
            await self._fetch_hour_again(name, provider, recovery)
            return
        started = datetime.fromtimestamp(self.ctx.clock(), UTC)
        recovery.fetch_started(started)
        # Announced before the fetch, or not made: what c123 hands out is gone from it.
        await save(self.documents, name, recovery, self.ctx.clock())
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
            else:
                recovery.fetch_failed()
            # Not written (the ledger refuses): the announcement stays, and the next poll plans
            # these hours anyway.
            await save(self.documents, name, recovery, self.ctx.clock())
            return
        since = recovery.check_next_fetch_since
        try:
            if since is not None and replies:
                replies = await not_stored(self.ctx.ledger, name, replies, since)
        except LedgerError as exc:
            # Nothing stored unchecked: the announcement stays, and the fetch's hours are
            # fetched again and checked once the ledger answers.
            self._store_refused(name, len(replies), exc)
            return
        if await self._store(name, replies):
            recovery.fetched_whole(started)
            await save(self.documents, name, recovery, self.ctx.clock())

    async def _fetch_hour_again(
        self, name: str, provider: PullsInbound, recovery: ReplyRecovery
    ) -> None:
        hour = recovery.hours[0]
        try:
            replies = await provider.fetch_inbound(hour)
        except UpstreamError as exc:
            self._count_error(name, "inbound", exc)
            dropped = recovery.hour_failed()
            # Counted once written: a poll that cannot write tries the same hour again.
            await save(self.documents, name, recovery, self.ctx.clock())
            if dropped is not None:
                self.ctx.metrics.cloud_reply_hours_abandoned.labels(name).inc()
                log.error("inbound_recovery_abandoned", provider=name, hour=dropped.isoformat())
            return
        # A ledger that cannot be read or written leaves the hour planned: it is fetched again.
        fresh = await not_stored(self.ctx.ledger, name, replies, hour - CLOCK_SLACK)
        if not await self._store(name, fresh):
            return
        self.ctx.metrics.cloud_replies_recovered.labels(name).inc(len(fresh))
        log.info(
            "inbound_recovered",
            provider=name,
            hour=hour.isoformat(),
            fetched=len(replies),
            new=len(fresh),
        )
        recovery.hour_fetched()
        await save(self.documents, name, recovery, self.ctx.clock())

    async def _store(self, name: str, replies: Sequence[CloudInbound]) -> bool:
        """Store the replies in order; False if the ledger refuses one. The rest are not kept:
        the plan in the ledger has their hours fetched again."""
        for index, reply in enumerate(replies):
            try:
                await store_inbound(self.ctx, name, reply)
            except LedgerError as exc:
                self._store_refused(name, len(replies) - index, exc)
                return False
        self.ctx.metrics.cloud_replies_pending.labels(name).set(0)
        return True

    def _store_refused(self, name: str, left: int, exc: LedgerError) -> None:
        self.ctx.metrics.cloud_replies_pending.labels(name).set(left)
        log.error("inbound_store_failed", provider=name, left=left, reason=str(exc))

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
