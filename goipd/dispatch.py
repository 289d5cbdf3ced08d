"""Takes due recipients from the ledger and sends them, one durable step at a time.

For each send: choose a route, write the claim (server, line) to the ledger, then call the
upstream, then write what it answered. A crash between claim and answer leaves the recipient
`dispatching`: reconciliation finds it at start-up (see reconcile.py for what happens then).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from goipd.config import RouteTarget, RoutingSettings
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Claim, Ledger, LedgerError, Outcome, Recipient, State
from goipd.metrics import Metrics
from goipd.outcomes import retry_delay
from goipd.routing import Choice, CloudChoice, LineChoice, Router
from goipd.upstream.cloud import CloudProvider, Verdict
from goipd.upstream.errors import ErrorReason, UpstreamError
from goipd.upstream.goip import GoipClient, SendAccepted
from goipd.wakeup import Wakeup

log = structlog.get_logger("goipd.dispatch")
IDLE_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Body:
    text: str
    targets: tuple[RouteTarget, ...] | None
    """The message's own route, or None to use the routing rules."""


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        router: Router,
        registry: LineRegistry,
        clients: Callable[[str], GoipClient | None],
        settings: RoutingSettings,
        metrics: Metrics,
        *,
        clouds: Callable[[str], CloudProvider | None] = lambda _name: None,
        batch: int = 500,
        concurrency: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.router = router
        self.registry = registry
        self.clients = clients
        self.clouds = clouds
        self.settings = settings
        self.metrics = metrics
        self.batch = batch
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = Wakeup()
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._bodies: OrderedDict[str, Body] = OrderedDict()

    def wake(self) -> None:
        self._wake.ring()

    async def run(self) -> None:
        while not self._stopping:
            try:
                started = await self.dispatch_once()
            except LedgerError as exc:
                log.error("dispatch_paused", reason=str(exc))
                started = 0
            if started == 0:
                await self._wake.sleep(IDLE_WAIT)

    async def stop(self, deadline: float) -> None:
        """Stop taking work; let upstream calls in flight finish until `deadline` (monotonic)."""
        self._stopping = True
        self._wake.ring()
        if self._in_flight:
            timeout = max(deadline - time.monotonic(), 0.0)
            _, pending = await asyncio.wait(self._in_flight, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("dispatch_abandoned", sends=len(pending))

    async def dispatch_once(self) -> int:
        """One pass over due recipients; returns how many sends it started."""
        now = self.clock()
        due = await self.ledger.due(now, self.batch)
        if not due:
            return 0
        bodies = await self._load_bodies({r.message_id for r in due})
        groups: dict[tuple[str, tuple[str, ...]], list[Recipient]] = {}
        for recipient in due:
            groups.setdefault((recipient.message_id, recipient.excluded_lines), []).append(
                recipient
            )
        deferred: list[Outcome] = []
        plans: list[tuple[Choice, Body, list[Recipient]]] = []
        for (message_id, excluded), recipients in groups.items():
            body = bodies.get(message_id)
            if body is None:
                continue
            expired = [r for r in recipients if now - r.created_at > self.settings.max_queue_age]
            deferred.extend(
                Outcome(
                    r.id,
                    State.FAILED,
                    error_code="expired",
                    error_meaning="not sent within routing.max_queue_age",
                )
                for r in expired
            )
            pending = [r for r in recipients if r not in expired]
            while pending:
                targets = body.targets or self.router.targets_for(pending[0].number)
                same_route = [
                    r
                    for r in pending
                    if body.targets or self.router.targets_for(r.number) == targets
                ]
                choice = self.router.choose(targets, now, set(excluded), want=len(same_route))
                if choice is None and excluded:
                    # Every candidate failed this recipient before: a second try on one of them
                    # beats waiting for max_queue_age.
                    choice = self.router.choose(targets, now, (), want=len(same_route))
                if choice is None:
                    deferred.extend(self._no_route(r, now) for r in same_route)
                    pending = [r for r in pending if r not in same_route]
                    continue
                take = same_route[: choice.capacity]
                pending = [r for r in pending if r not in take]
                self.router.record_use(choice, len(take), now)
                plans.append((choice, body, take))
        if deferred:
            await self.ledger.record(deferred, now)
        if not plans:
            return 0
        # Claim everything of this pass in one durable write *before* any upstream call: the
        # next pass then no longer sees these recipients as queued, and a crash from here on
        # leaves them `dispatching`, which reconciliation understands.
        claimed = set(
            await self.ledger.claim(
                [
                    Claim(r.id, _route_name(choice), _server(choice), _line(choice))
                    for choice, _, recipients in plans
                    for r in recipients
                ],
                now,
            )
        )
        started = 0
        for choice, body, recipients in plans:
            batch = [r for r in recipients if r.id in claimed]
            if not batch:
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._send(choice, body, batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            started += 1
        return started

    def _no_route(self, recipient: Recipient, now: float) -> Outcome:
        # No usable route is not an attempt: the recipient waits (up to max_queue_age).
        return Outcome(
            recipient.id,
            State.QUEUED,
            error_code="no_route",
            error_meaning="no usable line or provider for this destination right now",
            retry_at=now + self.settings.retry_delay,
        )

    async def _send(self, choice: Choice, body: Body, recipients: Sequence[Recipient]) -> None:
        try:
            if isinstance(choice, CloudChoice):
                await self._requeue(
                    recipients,
                    choice,
                    "cloud_unavailable",
                    f"cloud provider {choice.provider} is not configured",
                    0,
                )
                return
            await self._send_goip(choice, body, recipients)
        except LedgerError as exc:
            log.error("dispatch_record_failed", reason=str(exc), recipients=len(recipients))
        except Exception:
            # A bug here must not kill the dispatcher; the claim stays `dispatching` and is
            # reconciled like a crash.
            log.exception("dispatch_send_crashed", route=choice.key)
        finally:
            self._slots.release()

    async def _send_goip(self, choice: LineChoice, body: Body, batch: Sequence[Recipient]) -> None:
        client = self.clients(choice.server)
        if client is None:
            await self._requeue(batch, choice, "server_removed", "server no longer configured", 0)
            return
        labels = ("goip", choice.server, choice.line or "")
        try:
            reply = await client.send_sms(
                [r.number for r in batch],
                body.text,
                goip_line=choice.line,
                provider=choice.provider,
            )
        except UpstreamError as exc:
            ambiguous = exc.reason in (ErrorReason.TIMEOUT, ErrorReason.PARSE)
            if ambiguous:
                # The server may have taken the request before the failure: resending can
                # duplicate. Counted so the duplicate bound is observable.
                self.metrics.dispatch_ambiguous.inc(len(batch))
            log.warning(
                "send_failed",
                server=choice.server,
                line=choice.line,
                reason=exc.reason.value,
                detail=exc.detail,
                recipients=len(batch),
            )
            await self._requeue(batch, choice, f"upstream_{exc.reason.value}", exc.detail, 1)
            return
        if isinstance(reply, SendAccepted):
            outcomes = [
                Outcome(
                    r.id,
                    State.SUBMITTED,
                    task_id=reply.task_id,
                    upstream_id=f"{reply.task_id}.{r.number}",
                )
                for r in batch
            ]
            await self.ledger.record(outcomes, self.clock())
            log.info(
                "sms_submitted",
                server=choice.server,
                line=choice.line,
                provider=choice.provider,
                task_id=reply.task_id,
                recipients=len(batch),
                message_id=batch[0].message_id,
            )
            return
        self.metrics.sms_sent.labels(*labels, "rejected").inc(len(batch))
        log.warning(
            "send_rejected",
            server=choice.server,
            line=choice.line,
            provider=choice.provider,
            reason=reply.reason,
            recipients=len(batch),
        )
        # REJECT means our view of the server is stale (line gone, group unknown): try the
        # next route now, without waiting.
        await self._requeue(
            batch,
            choice,
            f"reject_{reply.reason}",
            f"SMS Server rejected the send: {reply.reason}",
            0,
        )

    async def _send_cloud(
        self, choice: CloudChoice, body: Body, batch: Sequence[Recipient]
    ) -> None:
        provider = self.clouds(choice.provider)
        if provider is None:
            await self._requeue(
                batch,
                choice,
                "cloud_unavailable",
                f"cloud provider {choice.provider} is not configured",
                0,
            )
            return
        by_number = {r.number: r for r in batch}
        results = []
        for start in range(0, len(batch), provider.max_batch):
            chunk = batch[start : start + provider.max_batch]
            results.extend(await provider.send([r.number for r in chunk], body.text))
        now = self.clock()
        outcomes: list[Outcome] = []
        retry: list[Recipient] = []
        for result in results:
            recipient = by_number.pop(result.number, None)
            if recipient is None:
                continue
            counted = {Verdict.ACCEPTED: "succeeded", Verdict.FAILED: "failed"}.get(
                result.verdict, "rejected"
            )
            self.metrics.sms_sent.labels(choice.provider, "", "", counted).inc()
            if result.verdict is Verdict.ACCEPTED:
                outcomes.append(
                    Outcome(recipient.id, State.SUBMITTED, upstream_id=result.upstream_id)
                )
            elif result.verdict is Verdict.FAILED:
                outcomes.append(
                    Outcome(
                        recipient.id,
                        State.FAILED,
                        error_code=result.code,
                        error_meaning=result.meaning,
                    )
                )
            else:
                if result.verdict is Verdict.DISABLE and self.router.cloud_enabled.get(
                    choice.provider, False
                ):
                    # Credentials, credit or account: nothing a retry fixes. Stop routing there
                    # until an operator acts (reload re-enables), and say so loudly.
                    self.router.cloud_enabled[choice.provider] = False
                    self.metrics.provider_disabled.labels(choice.provider).set(1)
                    log.error(
                        "provider_disabled",
                        provider=choice.provider,
                        code=result.code,
                        reason=result.meaning,
                    )
                retry.append(recipient)
        # A provider that answered for fewer numbers than asked: the rest were not taken.
        retry.extend(by_number.values())
        if outcomes:
            await self.ledger.record(outcomes, now)
        if retry:
            refusal = next(
                (r for r in results if r.verdict in (Verdict.RETRY, Verdict.DISABLE)), None
            )
            await self._requeue(
                retry,
                choice,
                (refusal.code if refusal else None) or "no_answer",
                (refusal.meaning if refusal else None) or "the provider gave no result",
                1,
            )

    async def _requeue(
        self,
        recipients: Sequence[Recipient],
        choice: Choice,
        code: str,
        meaning: str,
        delay_factor: int,
    ) -> None:
        now = self.clock()
        outcomes = []
        for r in recipients:
            attempts = r.attempts + 1
            if attempts >= self.settings.max_attempts:
                outcomes.append(
                    Outcome(
                        r.id,
                        State.FAILED,
                        error_code=code,
                        error_meaning=f"{meaning} (after {attempts} attempts)",
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        r.id,
                        State.QUEUED,
                        error_code=code,
                        error_meaning=meaning,
                        retry_at=now + delay_factor * retry_delay(self.settings, attempts),
                        exclude_line=choice.key,
                    )
                )
        await self.ledger.record(outcomes, now)
        self.wake()

    async def _load_bodies(self, message_ids: set[str]) -> dict[str, Body]:
        found = {}
        for message_id in message_ids:
            body = self._bodies.get(message_id)
            if body is None:
                message = await self.ledger.get_message(message_id)
                if message is None:
                    continue
                body = Body(message.text, _targets(message.route))
                self._bodies[message_id] = body
                if len(self._bodies) > 10_000:
                    self._bodies.popitem(last=False)
            found[message_id] = body
        return found


def _route_name(choice: Choice) -> str:
    return choice.provider if isinstance(choice, CloudChoice) else "goip"


def _server(choice: Choice) -> str | None:
    return choice.server if isinstance(choice, LineChoice) else None


def _line(choice: Choice) -> str | None:
    return choice.line if isinstance(choice, LineChoice) else None


def _targets(route: str | None) -> tuple[RouteTarget, ...] | None:
    if route is None:
        return None
    return (RouteTarget.model_validate(json.loads(route)),)
