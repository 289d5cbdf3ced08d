"""Takes due recipients from the ledger and sends them, one durable step at a time.

For each send: choose a route, write the claim (server, line) to the ledger, then call the
upstream, then write what it answered. A crash between claim and answer leaves the recipient
`dispatching`: reconciliation finds it at start-up (see reconcile.py for what happens then).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from goipd.config import RouteTarget, RoutingSettings
from goipd.dispatch import shared_rate
from goipd.dispatch.routing import Choice, CloudChoice, LineChoice, Router
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Dispatching, HeldStore
from goipd.ledger.held import HANDOVER_RETRIES, store_handover_retries
from goipd.metrics.catalog import Metrics
from goipd.model import (
    EXPIRED_CODE,
    EXPIRED_MEANING,
    NORMAL_PRIORITY,
    Claim,
    LedgerError,
    Outcome,
    Recipient,
    State,
)
from goipd.reports.outcomes import retry_delay
from goipd.runtime.wakeup import Wakeup
from goipd.upstream.cloud import CloudProvider, Verdict
from goipd.upstream.errors import AMBIGUOUS_REASONS, REASON_CODES, UpstreamError
from goipd.upstream.goip import GoipClient, SendAccepted, TextParts, goip_refusal

log = structlog.get_logger("goipd.dispatch.dispatcher")
IDLE_WAIT = 1.0
SLOW_SEND = 1.0
"""Seconds a sendsms call may take before its server counts as slow (a healthy one answers in
milliseconds; a v1.28.4 server waiting for its engine takes up to 15 s)."""
BODY_CACHE = 10_000
"""Messages whose text and route are kept for later passes (big messages span many)."""
AMBIGUOUS_CODES = frozenset(reason.value for reason in AMBIGUOUS_REASONS)
EXPIRY_SWEEP = 1.0
"""Seconds between two looks for recipients whose validity ended while not due."""


RouteKey = tuple[tuple[RouteTarget, ...], tuple[str, ...], bool]
"""What recipients routed alike share: route targets, lines excluded, whether lines can carry
the text."""


@dataclass(frozen=True, slots=True)
class Body:
    text: str
    targets: tuple[RouteTarget, ...] | None
    """The message's own route, or None to use the routing rules."""
    parts: TextParts
    goip_refusal: tuple[str, str] | None
    """Why no GoIP hop can carry the text exactly (error code, meaning), if none can."""

    @classmethod
    def of(cls, text: str, route: str | None) -> Body:
        return cls(text, _targets(route), TextParts(text), goip_refusal(text))


class DispatchLedger(Dispatching, HeldStore, Protocol):
    """What dispatch uses: due recipients and claims, and the retry times of failed hand-overs."""


UnconfirmedSends = Callable[[str, Sequence[Recipient], float, UpstreamError], None]
"""Told of a GoIP send whose fate is unknown (server, recipients, when the call started, the
error): it finds out whether the server created the task before anything is sent again."""


class Dispatcher:
    def __init__(
        self,
        ledger: DispatchLedger,
        router: Router,
        registry: LineRegistry,
        clients: Callable[[str], GoipClient | None],
        settings: RoutingSettings,
        metrics: Metrics,
        *,
        clouds: Callable[[str], CloudProvider | None] = lambda _name: None,
        schedule_ahead: Callable[[str], float] = lambda _name: 0.0,
        shared_line_rate: bool = False,
        unconfirmed: UnconfirmedSends | None = None,
        batch: int = 500,
        concurrency: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.router = router
        self.registry = registry
        self.clients = clients
        self.clouds = clouds
        self.schedule_ahead = schedule_ahead
        self.shared_line_rate = shared_line_rate
        """Count line sends against the rate of all instances on the ledger (shared_rate.py)."""
        self.unconfirmed = unconfirmed
        """None: such sends are queued again at once (and may go out twice)."""
        self.held: Callable[[], Collection[str]] = lambda: ()
        """Servers not to send to now: their unconfirmed sends are being looked for."""
        self.settings = settings
        self.metrics = metrics
        self.batch = batch
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = Wakeup()
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._bodies: OrderedDict[str, Body] = OrderedDict()
        self._handover_retry: OrderedDict[tuple[int, int], float | None] = OrderedDict()
        """(recipient id, attempts) → when its failed hand-over may be tried again, None if
        it has no such time: a cache of the ledger's `handover_retries`. A failed hand-over
        waits queued at its send_at (so no other pass sends it early); only this tells the
        hand-over pass it is a scheduled recipient and not one waiting for a retry. What the
        ledger said of a (recipient, attempts) stays true: a retry time is written before its
        recipient is queued again, and holds only while its attempts do not change (every claim
        adds one). So each is read once, in one read per pass for those not known yet."""
        self._outcomes = _OutcomeWriter(ledger, clock)
        self._open_sends: dict[str, list[float]] = {}
        """When each open sendsms call of a server started (monotonic): a slow engine must not
        take every send slot."""
        self._send_seconds: dict[str, float] = {}
        """How long each server's last sendsms call took."""
        self._next_sweep = 0.0
        self._reserved: dict[RouteKey, tuple[int, float]] = {}
        """Route keys whose next capacity is kept for a priority that found none: (priority,
        until when). A hint of this process only: at worst, a lower priority takes one send."""

    def wake(self) -> None:
        self._wake.ring()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.expire_waiting()
                started = await self.dispatch_once()
                started += await self.hand_over_scheduled()
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
        for key in [key for key, (_, until) in self._reserved.items() if until <= now]:
            del self._reserved[key]
        bodies = await self._load_bodies({r.message_id for r in due})
        groups: dict[tuple[str, tuple[str, ...]], list[Recipient]] = {}
        for recipient in due:
            groups.setdefault((recipient.message_id, recipient.excluded_lines), []).append(
                recipient
            )
        deferred: list[Outcome] = []
        plans: list[tuple[Choice, Body, list[Recipient]]] = []
        planned: Counter[str] = Counter()
        busy = {name for name, opened in self._open_sends.items() if self._full(name, len(opened))}
        busy.update(self.held())
        # Routes only busy servers could take this pass: busy only grows within a pass, so
        # their later recipients are left queued without routing them again (a scan of every
        # line each, otherwise: 10x fewer single-recipient sends per second).
        waiting: set[RouteKey] = set()
        for (message_id, excluded), recipients in groups.items():
            body = bodies.get(message_id)
            if body is None:
                continue
            pending: list[Recipient] = []
            for r in recipients:
                expired = self._expired(r, now)
                if expired is not None:
                    deferred.append(expired)
                else:
                    pending.append(r)
            # Recipients of one message that share a route list, in order of first appearance;
            # each is then cut into the slices the chosen lines can take.
            by_targets: dict[tuple[RouteTarget, ...], list[Recipient]] = {}
            if body.targets:
                by_targets[body.targets] = pending
            else:
                for r in pending:
                    by_targets.setdefault(self.router.targets_for(r.number), []).append(r)
            for targets, same_route in by_targets.items():
                lines = body.goip_refusal is None
                key = (targets, excluded, lines)
                if (
                    not same_route
                    or key in waiting
                    or self._held_for_higher(key, same_route[0].priority, now)
                ):
                    continue
                while same_route:
                    choice = self.router.choose(
                        targets,
                        now,
                        set(excluded),
                        want=len(same_route),
                        text=body.parts,
                        lines=lines,
                        busy=busy,
                    )
                    if choice is None and excluded:
                        # Every candidate failed this recipient before: a second try on one of
                        # them beats waiting for max_queue_age.
                        choice = self.router.choose(
                            targets,
                            now,
                            (),
                            len(same_route),
                            text=body.parts,
                            lines=lines,
                            busy=busy,
                        )
                    if choice is None:
                        if body.goip_refusal is not None and not any(t.cloud for t in targets):
                            deferred.extend(_refused(r, *body.goip_refusal) for r in same_route)
                        elif busy and self.router.choose(
                            targets, now, (), 1, text=body.parts, lines=lines
                        ):
                            # Only servers with all their sends open could take these: they
                            # stay queued for the pass after one of those sends ends.
                            waiting.add((targets, excluded, lines))
                        else:
                            deferred.extend(self._no_route(r, now, key) for r in same_route)
                        break
                    self._reserved.pop(key, None)
                    take = same_route[: choice.capacity]
                    same_route = same_route[choice.capacity :]
                    self.router.record_use(choice, len(take), now)
                    plans.append((choice, body, take))
                    if isinstance(choice, LineChoice):
                        planned[choice.server] += 1
                        open_count = len(self._open_sends.get(choice.server, ()))
                        if self._full(choice.server, open_count + planned[choice.server]):
                            busy.add(choice.server)
        if deferred:
            await self.ledger.record(deferred, now)
        reserved_in: int | None = None
        if plans and self.shared_line_rate:
            plans, reserved_in = await shared_rate.admit(
                self.ledger, self.router, plans, self.settings.line_rate_per_minute
            )
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
        if len(claimed) < sum(len(recipients) for _, _, recipients in plans):
            # Another instance on the ledger claimed some first: those are not sent here.
            await shared_rate.forget_unclaimed(
                self.ledger, self.router, plans, claimed, reserved_in
            )
        started = 0
        for choice, body, recipients in plans:
            batch = [r for r in recipients if r.id in claimed]
            if not batch:
                continue
            await self._slots.acquire()
            try:
                batch = await self._drop_expired(batch)
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            await self._restamp_if_late(choice, batch, now)
            opened = time.monotonic()
            if isinstance(choice, LineChoice):
                self._open_sends.setdefault(choice.server, []).append(opened)
            task = asyncio.create_task(self._send(choice, body, batch, opened=opened))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            started += 1
        return started

    def _expired(self, recipient: Recipient, now: float) -> Outcome | None:
        """The outcome that expires `recipient` unsent, if its time is up: its message's
        validity, or routing.max_queue_age since it was accepted."""
        if recipient.expires_at is not None and recipient.expires_at <= now:
            self.metrics.recipients_expired.labels("validity").inc()
            return Outcome(
                recipient.id, State.EXPIRED, error_code=EXPIRED_CODE, error_meaning=EXPIRED_MEANING
            )
        if now - recipient.created_at > self.settings.max_queue_age:
            self.metrics.recipients_expired.labels("max_queue_age").inc()
            return Outcome(
                recipient.id,
                State.EXPIRED,
                error_code="max_queue_age",
                error_meaning="not handed to an upstream within routing.max_queue_age",
            )
        return None

    async def _drop_expired(self, batch: list[Recipient]) -> list[Recipient]:
        """`batch`, claimed earlier, without the recipients whose validity ended while they
        waited for a send slot: those expire instead of going out late."""
        now = self.clock()
        expired = [r.id for r in batch if r.expires_at is not None and r.expires_at <= now]
        if not expired:
            return batch
        await self._outcomes.record(
            [
                Outcome(rid, State.EXPIRED, error_code=EXPIRED_CODE, error_meaning=EXPIRED_MEANING)
                for rid in expired
            ]
        )
        self.metrics.recipients_expired.labels("validity").inc(len(expired))
        return [r for r in batch if r.id not in set(expired)]

    async def expire_waiting(self) -> int:
        """Recipients that expire while waiting for a retry or a provider (not due, so no pass
        sees them) expire here, at most one second late."""
        now = self.clock()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + EXPIRY_SWEEP
        expired = await self.ledger.expire(now, self.batch)
        if expired:
            self.metrics.recipients_expired.labels("validity").inc(expired)
            log.info("recipients_expired", recipients=expired)
        return expired

    def _full(self, server: str, sends: int) -> bool:
        """Whether `server` may take no more sendsms calls now: it has max_sends_in_flight of
        them open and is slow (or not yet known to be fast). A fast server is never full: its
        calls end within milliseconds, and capping them would only cut throughput."""
        config = self.router.servers.get(server)
        if sends < (config.max_sends_in_flight if config is not None else 1):
            return False
        last = self._send_seconds.get(server)
        if last is None or last > SLOW_SEND:
            return True
        starts = self._open_sends.get(server)
        return starts is not None and time.monotonic() - starts[0] > SLOW_SEND

    def _no_route(self, recipient: Recipient, now: float, key: RouteKey) -> Outcome:
        # No usable route is not an attempt: the recipient waits (up to max_queue_age).
        retry_at = now + self.settings.retry_delay
        if recipient.priority > NORMAL_PRIORITY:
            # The capacity these targets get back (a line's rate or quota, a line logging in)
            # goes to this high or urgent recipient before any of a lower priority: those are
            # held until it is tried again, which is soon, so that the capacity does not sit
            # unused. (Normal traffic keeps retry_delay: retried every second, a long queue
            # would be rewritten five times as often.)
            retry_at = now + min(self.settings.retry_delay, IDLE_WAIT)
            held = self._reserved.get(key)
            if held is None or held[0] <= recipient.priority:
                self._reserved[key] = (recipient.priority, retry_at + IDLE_WAIT)
        return Outcome(
            recipient.id,
            State.QUEUED,
            error_code="no_route",
            error_meaning="no usable line or provider for this destination right now",
            retry_at=retry_at,
            # Read as queued this pass; another instance may have claimed it since.
            if_state=State.QUEUED,
        )

    def _held_for_higher(self, key: RouteKey, priority: int, now: float) -> bool:
        """Whether recipients of `priority` must leave `key`'s capacity to a higher priority
        that found none and is due again shortly (left queued, nothing written)."""
        held = self._reserved.get(key)
        if held is None:
            return False
        if held[1] <= now:
            del self._reserved[key]
            return False
        return held[0] > priority

    async def hand_over_scheduled(self) -> int:
        """Scheduled recipients whose route starts with a provider that schedules sends itself
        (smsgo `dlvtime`, c123 `time`) are handed to it up to that provider's `schedule_ahead`
        before their time: the provider then sends on time even if goipd is down, and DELETE
        can still cancel them there (smsgo). Routes that start with own SIMs keep scheduled
        messages in goipd: which line is usable is only known when they are due."""
        horizon = max((self.schedule_ahead(name) for name in self.router.clouds), default=0.0)
        if horizon <= 0:
            return 0
        now = self.clock()
        due = await self.ledger.due(now + horizon, self.batch)
        waiting = [r for r in due if r.next_attempt_at > now]
        await self._load_handover_retries(waiting)
        early = [r for r in waiting if r.attempts == 0 or self._handover_due(r, now)]
        if not early:
            return 0
        bodies = await self._load_bodies({r.message_id for r in early})
        groups: dict[tuple[str, str, float], list[Recipient]] = {}
        for r in early:
            body = bodies.get(r.message_id)
            targets = (body.targets or self.router.targets_for(r.number)) if body else ()
            provider = targets[0].cloud if targets else None
            if (
                provider is not None
                and self.router.cloud_enabled.get(provider)
                and r.next_attempt_at - now <= self.schedule_ahead(provider)
            ):
                groups.setdefault((r.message_id, provider, r.next_attempt_at), []).append(r)
        if not groups:
            return 0
        claimed = set(
            await self.ledger.claim(
                [Claim(r.id, key[1], None, None) for key, rs in groups.items() for r in rs], now
            )
        )
        started = 0
        for (message_id, name, send_at), recipients in groups.items():
            batch = [r for r in recipients if r.id in claimed]
            if not batch:
                continue
            await self._slots.acquire()
            choice = CloudChoice(name, capacity=len(batch))
            task = asyncio.create_task(
                self._send(choice, bodies[message_id], batch, send_at=send_at)
            )
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            started += 1
        return started

    async def _load_handover_retries(self, waiting: Sequence[Recipient]) -> None:
        """Fill the cache with the retry times of the recipients of `waiting` that were tried
        before (attempts > 0) and not looked up at these attempts yet: one read. They are kept
        in the ledger, so a restart or another instance dispatching the recipient keeps them."""
        unknown = {
            r.id: r.attempts
            for r in waiting
            if r.attempts > 0 and (r.id, r.attempts) not in self._handover_retry
        }
        if not unknown:
            return
        found = await self.ledger.handover_retries(unknown)
        for rid, attempts in unknown.items():
            stored = found.get(rid)
            retry_at = stored[1] if stored is not None and stored[0] == attempts else None
            self._remember_handover((rid, attempts), retry_at)

    def _handover_due(self, recipient: Recipient, now: float) -> bool:
        retry_at = self._handover_retry.get((recipient.id, recipient.attempts))
        return retry_at is not None and retry_at <= now

    def _remember_handover(self, key: tuple[int, int], retry_at: float | None) -> None:
        self._handover_retry[key] = retry_at
        self._handover_retry.move_to_end(key)
        while len(self._handover_retry) > HANDOVER_RETRIES:
            self._handover_retry.popitem(last=False)

    async def _restamp_if_late(
        self, choice: Choice, batch: Sequence[Recipient], claimed_at: float
    ) -> None:
        """A GoIP send that starts long after its claim (every send slot was busy with slow
        servers) would fall outside the task-id window crash recovery scans, so a crash then
        would send it twice: its claim time moves to now first. One write, only when late."""
        if not isinstance(choice, LineChoice):
            return
        client = self.clients(choice.server)
        waited = self.clock() - claimed_at
        if client is None or waited <= client.send_timeout / 2:
            return
        try:
            await self.ledger.restamp_claims([r.id for r in batch], self.clock())
        except LedgerError as exc:
            # The send goes ahead as before; only its crash window is the older one.
            log.warning("claims_restamp_failed", reason=str(exc), recipients=len(batch))
            return
        log.info("claims_restamped", server=choice.server, waited=round(waited, 3))

    async def _send(
        self,
        choice: Choice,
        body: Body,
        recipients: Sequence[Recipient],
        *,
        send_at: float | None = None,
        opened: float = 0.0,
    ) -> None:
        released = False

        def answered() -> None:
            # The slot bounds upstream calls open at once, not writes: freed as soon as the
            # call is over, the next send starts while this outcome waits for the ledger's
            # next commit (a crash before it leaves the claim, as during the call).
            nonlocal released
            if not released:
                released = True
                self._slots.release()
                if isinstance(choice, LineChoice):
                    self._send_closed(choice.server, opened)

        try:
            if isinstance(choice, CloudChoice):
                await self._send_cloud(choice, body, recipients, send_at)
            else:
                await self._send_goip(choice, body, recipients, answered)
        except LedgerError as exc:
            log.error("dispatch_record_failed", reason=str(exc), recipients=len(recipients))
        except Exception:
            # A bug here must not kill the dispatcher; the claim stays `dispatching` and is
            # reconciled like a crash.
            log.exception("dispatch_send_crashed", route=choice.key)
        finally:
            answered()

    def _send_closed(self, server: str, opened: float) -> None:
        was_full = self._full(server, len(self._open_sends.get(server, ())))
        self._send_seconds[server] = time.monotonic() - opened
        open_sends = self._open_sends.get(server, [])
        if opened in open_sends:
            open_sends.remove(opened)
        if not open_sends:
            self._open_sends.pop(server, None)
        if was_full:
            # Recipients left queued for this server can go now.
            self.wake()

    async def _send_goip(
        self,
        choice: LineChoice,
        body: Body,
        batch: Sequence[Recipient],
        answered: Callable[[], None],
    ) -> None:
        client = self.clients(choice.server)
        if client is None:
            answered()
            await self._requeue(batch, choice, "server_removed", "server no longer configured", 0)
            return
        labels = ("goip", choice.server, choice.line or "")
        started = self.clock()
        try:
            reply = await client.send_sms(
                [r.number for r in batch],
                body.text,
                goip_line=choice.line,
                provider=choice.provider,
            )
        except UpstreamError as exc:
            answered()
            ambiguous = exc.reason in AMBIGUOUS_REASONS
            if ambiguous and self.unconfirmed is not None:
                # The server may have stored the task before the failure: the claims stay and
                # the server is asked (querysms) before anything is sent again.
                log.warning(
                    "send_unconfirmed",
                    server=choice.server,
                    line=choice.line,
                    reason=exc.reason.value,
                    detail=exc.detail,
                    recipients=len(batch),
                )
                self.unconfirmed(choice.server, batch, started, exc)
                return
            if ambiguous:
                # Resending can duplicate: counted so the duplicate bound is observable.
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
        answered()
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
            await self._outcomes.record(outcomes)
            # Per send, so at debug: at info it was 6% of a busy dispatcher's CPU.
            log.debug(
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
            reason=reply.reason[:64],
            recipients=len(batch),
        )
        # REJECT means our view of the server is stale (line gone, group unknown): try the
        # next route now, without waiting.
        await self._requeue(
            batch,
            choice,
            f"reject_{reply.kind}",
            f"SMS Server rejected the send: {reply.reason[:64] or '(no reason given)'}",
            0,
        )

    async def _send_cloud(
        self,
        choice: CloudChoice,
        body: Body,
        batch: Sequence[Recipient],
        send_at: float | None = None,
    ) -> None:
        provider = self.clouds(choice.provider)
        if provider is None:
            await self._requeue(
                batch,
                choice,
                "cloud_unavailable",
                f"cloud provider {choice.provider} is not configured",
                0,
                hold_until=send_at,
            )
            return
        by_number = {r.number: r for r in batch}
        results = []
        for start in range(0, len(batch), provider.max_batch):
            chunk = batch[start : start + provider.max_batch]
            results.extend(
                await provider.send([r.number for r in chunk], body.text, send_at=send_at)
            )
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
            # The provider may have taken the request before its answer was lost; a send
            # after that (a retry, the next hop, smsgo's backup URL) may go out twice.
            lost = max(result.lost_answers, int(result.code in AMBIGUOUS_CODES))
            if lost:
                self.metrics.dispatch_ambiguous.inc(lost)
            if result.verdict is Verdict.ACCEPTED:
                # The provider has it: that is `sent` (handed to the network), and only a
                # delivery report or status query can still change it. A scheduled hand-over
                # is `submitted` until then: the provider holds it and it can be cancelled.
                state = State.SUBMITTED if send_at is not None else State.SENT
                outcomes.append(Outcome(recipient.id, state, upstream_id=result.upstream_id))
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
                if result.code in REASON_CODES:
                    self.metrics.provider_errors.labels(choice.provider, "send", result.code).inc()
                if result.retry_after is not None:
                    self.router.pause_cloud(choice.provider, now + result.retry_after)
                if result.verdict is Verdict.DISABLE and self.router.disable_cloud(
                    choice.provider, now, result.code or ""
                ):
                    # Credentials, credit or account: nothing a quick retry fixes. Stop routing
                    # there until it is fixed (a balance poll with credit when credentials or
                    # credit disabled it, a probe send that is accepted, or a reload), and say
                    # so loudly.
                    self.metrics.provider_disabled.labels(choice.provider).set(1)
                    log.error(
                        "provider_disabled",
                        provider=choice.provider,
                        code=result.code,
                        reason=result.meaning,
                    )
                retry.append(recipient)
        if any(
            r.verdict in (Verdict.ACCEPTED, Verdict.FAILED) for r in results
        ) and self.router.enable_cloud(choice.provider):
            # A probe of a disabled provider was answered for a number: the account works.
            self.metrics.provider_disabled.labels(choice.provider).set(0)
            log.info("provider_reenabled", provider=choice.provider, by="probe")
        # A provider that answered for fewer numbers than asked: the rest were not taken.
        retry.extend(by_number.values())
        if outcomes:
            await self.ledger.record(outcomes, now)
            if send_at is not None:
                await self._forget_handover_retries(batch, outcomes)
        log.info(
            "cloud_send_done",
            provider=choice.provider,
            message_id=batch[0].message_id,
            accepted=sum(1 for o in outcomes if o.state is not State.FAILED),
            scheduled=send_at is not None,
            failed=sum(1 for o in outcomes if o.state is State.FAILED),
            retry=len(retry),
        )
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
                hold_until=send_at,
            )

    async def _requeue(
        self,
        recipients: Sequence[Recipient],
        choice: Choice,
        code: str,
        meaning: str,
        delay_factor: int,
        *,
        hold_until: float | None = None,
    ) -> None:
        """Back to the queue for another try, or failed once attempts are used up. With
        `hold_until` (the send_at of a failed hand-over) it waits for its time instead: were
        it due earlier, a pass would send it at once through the route's first usable hop,
        scheduling or not. The hand-over itself is tried again after the retry delay."""
        now = self.clock()
        outcomes = []
        retries: dict[int, tuple[int, float]] = {}
        held = hold_until is not None and hold_until > now
        for r in recipients:
            attempts = r.attempts + 1
            delay = delay_factor * retry_delay(self.settings, attempts)
            if not held and attempts >= self.settings.max_attempts:
                outcomes.append(
                    Outcome(
                        r.id,
                        State.FAILED,
                        error_code=code,
                        error_meaning=f"{meaning} (after {attempts} attempts)",
                    )
                )
                continue
            retry_at = now + delay
            if hold_until is not None and held:
                # Not failed before its time: the pass at send_at still has its own try.
                retry_at = max(hold_until, retry_at)
                if attempts + 1 < self.settings.max_attempts:
                    # `attempts` is the recipient's count since its claim: the time holds
                    # until the next claim.
                    retries[r.id] = (attempts, now + max(delay, self.settings.retry_delay))
            outcomes.append(
                Outcome(
                    r.id,
                    State.QUEUED,
                    error_code=code,
                    error_meaning=meaning,
                    retry_at=retry_at,
                    exclude_line=choice.key,
                )
            )
        if retries:
            await self._store_handover_retries(retries, now)
        await self._outcomes.record(outcomes)
        self.wake()

    async def _store_handover_retries(
        self, retries: Mapping[int, tuple[int, float]], now: float
    ) -> None:
        """Keep the retry times of failed hand-overs in the ledger, before their recipients are
        queued again: a pass (of any instance) that finds one queued then finds its time."""
        for rid, (attempts, retry_at) in retries.items():
            self._remember_handover((rid, attempts), retry_at)
        await store_handover_retries(self.ledger, retries, now)

    async def _forget_handover_retries(
        self, batch: Sequence[Recipient], outcomes: Sequence[Outcome]
    ) -> None:
        """Delete the retry times of hand-overs tried again that are done: handed over, or
        failed for good. (The claim already made them void.)"""
        tried = {r.id for r in batch if r.attempts > 0}
        done = [o.recipient_id for o in outcomes if o.recipient_id in tried]
        if not done:
            return
        try:
            await self.ledger.clear_handover_retries(done)
        except LedgerError as exc:
            log.warning("handover_retry_clear_failed", reason=str(exc), recipients=len(done))

    async def _load_bodies(self, message_ids: set[str]) -> dict[str, Body]:
        found = {}
        missing = []
        for message_id in message_ids:
            body = self._bodies.get(message_id)
            if body is None:
                missing.append(message_id)
            else:
                found[message_id] = body
        if missing:
            # One read for the whole pass: with single-recipient messages nearly every
            # recipient of a pass belongs to a message not seen before.
            for message_id, (text, route) in (await self.ledger.message_bodies(missing)).items():
                body = found[message_id] = Body.of(text, route)
                self._bodies[message_id] = body
            while len(self._bodies) > BODY_CACHE:
                self._bodies.popitem(last=False)
        return found


class _OutcomeWriter:
    """Outcomes of sends whose replies come in together go to the ledger as one write: one
    queue item, future and savepoint for all of them instead of one each."""

    def __init__(self, ledger: Dispatching, clock: Callable[[], float]) -> None:
        self._ledger = ledger
        self._clock = clock
        self._outcomes: list[Outcome] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writes: set[asyncio.Task[None]] = set()

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Durable when it returns, like Ledger.record (whose errors it raises)."""
        loop = asyncio.get_running_loop()
        if not self._waiters:
            # Once the callbacks already due have run: replies read in the same loop
            # iteration join this write.
            loop.call_soon(self._flush)
        waiter: asyncio.Future[None] = loop.create_future()
        self._outcomes.extend(outcomes)
        self._waiters.append(waiter)
        await waiter

    def _flush(self) -> None:
        outcomes, waiters = self._outcomes, self._waiters
        self._outcomes, self._waiters = [], []
        task = asyncio.create_task(self._write(outcomes, waiters))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, outcomes: list[Outcome], waiters: list[asyncio.Future[None]]) -> None:
        error: BaseException | None = None
        try:
            await self._ledger.record(outcomes, self._clock())
        except asyncio.CancelledError:
            for waiter in waiters:
                waiter.cancel()
            raise
        except Exception as exc:
            error = exc
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def _refused(recipient: Recipient, code: str, meaning: str) -> Outcome:
    """A text no hop of the route can carry: failed before any task is created."""
    return Outcome(recipient.id, State.FAILED, error_code=code, error_meaning=meaning)


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
