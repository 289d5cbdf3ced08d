"""Delivers stored status events to their status_url, signed, at least once.

Events are written by the ledger in the transaction that changes a recipient's state, so one
is never lost to a crash; a delivered one is deleted. Every instance on a ledger delivers: an
event is claimed for the time a delivery may take, and one whose instance died is taken again
after that (receivers de-duplicate by `id`).

A receiver (scheme://host:port) that fails is backed off as a whole, exponentially with jitter,
and holds at most max_in_flight_per_receiver of the max_in_flight POSTs: one dead or hanging
receiver delays neither the others nor sending, which never waits for a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog
from pydantic import SecretStr

from goipd import __version__
from goipd.callbacks.events import event_body, event_id
from goipd.callbacks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign
from goipd.callbacks.targets import CheckedResolver, GetAddrInfo, RefusedTarget, check_status_url
from goipd.config import CallbackSettings, Settings
from goipd.ledger.base import StatusEvents
from goipd.ledger.events import StatusEvent
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from goipd.runtime.wakeup import Wakeup
from goipd.upstream.http import read_capped

log = structlog.get_logger("goipd.callbacks.sender")
HOUSEKEEPING = 10.0
"""How often old and surplus events are dropped and the pending gauge is refreshed."""
RESPONSE_READ_MAX = 4096
"""What is read of a response (its status is all that counts); a receiver cannot make goipd
read a large body. A small one read to its end lets the connection be used again."""
DNS_CACHE_TTL = 10


@dataclass
class _Receiver:
    gate: asyncio.Semaphore
    """max_in_flight_per_receiver: a take may hand over a few more than the room left."""
    in_flight: int = 0
    failures: int = 0
    """Failed back-off rounds in a row; 0 after a delivery."""
    blocked_until: float = 0.0


@dataclass(frozen=True)
class _Result:
    result: str
    """delivered, retried, dropped_gone, given_up, unsigned or refused."""
    detail: str | None = None


class StatusCallbackSender:
    def __init__(
        self,
        ledger: StatusEvents,
        settings: Callable[[], Settings],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        getaddrinfo: GetAddrInfo | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._getaddrinfo = getaddrinfo
        """The resolver's lookup (tests give a fixed table); default: the loop's getaddrinfo."""
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._receivers: dict[str, _Receiver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = Wakeup()
        self._stopping = False
        self._unsigned_logged: set[str] = set()
        self._pending_labels: set[str] = set()
        self._more_due = False

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(
                lambda: self.settings().callbacks.allow_private, self._getaddrinfo
            ),
            limit=0,  # max_in_flight bounds the POSTs
            ttl_dns_cache=DNS_CACHE_TTL,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": f"goipd/{__version__}"},
            trust_env=False,  # a proxy would resolve the host itself, past the address check
        )
        try:
            try:
                released = await self.ledger.release_status_events()
                if released:
                    log.info("callbacks_released", events=released)
            except LedgerError as exc:
                log.error("callbacks_paused", reason=str(exc))
            next_housekeeping = 0.0
            while not self._stopping:
                settings = self.settings().callbacks
                now = self.clock()
                if now >= next_housekeeping:
                    await self._housekeeping(settings, now)
                    next_housekeeping = now + HOUSEKEEPING
                await self._take(settings, now)
                # More due than there was room for: a delivery that ends rings the wake-up.
                await self._wake.sleep(settings.poll_interval)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.ring()

    # --- taking and housekeeping ----------------------------------------------------------------

    async def _take(self, settings: CallbackSettings, now: float) -> None:
        room = settings.max_in_flight - len(self._tasks)
        self._more_due = False
        if room <= 0:
            self._more_due = True
            return
        per_receiver = settings.max_in_flight_per_receiver
        skip = {
            key
            for key, receiver in self._receivers.items()
            if receiver.blocked_until > now or receiver.in_flight >= per_receiver
        }
        try:
            events = await self.ledger.take_status_events(
                now, _claim_time(settings), room, per_receiver, skip
            )
        except LedgerError as exc:
            log.error("callbacks_paused", reason=str(exc))
            return
        self._more_due = len(events) >= room
        for event in events:
            receiver = self._receivers.get(event.receiver)
            if receiver is None:
                receiver = self._receivers[event.receiver] = _Receiver(
                    asyncio.Semaphore(per_receiver)
                )
            receiver.in_flight += 1
            task = asyncio.create_task(self._deliver_and_settle(event, receiver))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("callback_crashed", exc_info=task.exception())
        if self._more_due:
            self._wake.ring()

    async def _housekeeping(self, settings: CallbackSettings, now: float) -> None:
        try:
            given_up = await self.ledger.expire_status_events(now - settings.give_up_after, now)
            over_cap = await self.ledger.cap_status_events(settings.max_pending_per_receiver, now)
            pending = await self.ledger.status_events_pending()
        except LedgerError as exc:
            log.error("callbacks_housekeeping_failed", reason=str(exc))
            return
        for result, dropped in (("given_up", given_up), ("dropped_over_cap", over_cap)):
            for receiver, count in dropped.items():
                self.metrics.status_callbacks.labels(receiver, result).inc(count)
                log.warning("callbacks_dropped", receiver=receiver, reason=result, events=count)
        for receiver, count in pending.items():
            self.metrics.status_callbacks_pending.labels(receiver).set(count)
        for receiver in self._pending_labels - pending.keys():
            with contextlib.suppress(KeyError):
                self.metrics.status_callbacks_pending.remove(receiver)
        self._pending_labels = set(pending)
        # Back-off state of receivers with nothing left to send is of no more use.
        for key in [k for k, r in self._receivers.items() if k not in pending and not r.in_flight]:
            del self._receivers[key]

    # --- one delivery ---------------------------------------------------------------------------

    async def _deliver_and_settle(self, event: StatusEvent, receiver: _Receiver) -> None:
        try:
            async with receiver.gate:
                started = self.clock()
                outcome = await self._deliver(event)
            now = self.clock()
            settings = self.settings().callbacks
            retry_at: float | None = None
            if outcome.result == "delivered":
                receiver.failures = 0
                receiver.blocked_until = 0.0
            elif outcome.result == "retried":
                if now - event.at >= settings.give_up_after:
                    outcome = _Result("given_up", outcome.detail)
                else:
                    retry_at = self._back_off(receiver, settings, started, now)
            try:
                if retry_at is None:
                    await self.ledger.settle_status_events([event.id])
                else:
                    detail = outcome.detail or "failed"
                    await self.ledger.settle_status_events((), [(event.id, retry_at, detail)])
            except LedgerError as exc:
                # Its claim runs out and it is sent again: receivers de-duplicate by id.
                log.error(
                    "callback_record_failed",
                    receiver=event.receiver,
                    event_id=event_id(event),
                    reason=str(exc),
                )
            self.metrics.status_callbacks.labels(event.receiver, outcome.result).inc()
            self._log(event, outcome, retry_at, now)
        finally:
            receiver.in_flight -= 1

    def _back_off(
        self, receiver: _Receiver, settings: CallbackSettings, started: float, now: float
    ) -> float:
        """When the receiver may be tried again. Deliveries that failed together (started
        before the back-off another one set) count as one failure, not several."""
        if receiver.blocked_until <= started:
            receiver.failures += 1
            delay = min(
                settings.retry_min * 2 ** min(receiver.failures - 1, 30), settings.retry_max
            )
            delay *= 0.75 + 0.5 * self._rng.random()
            receiver.blocked_until = now + min(delay, settings.retry_max)
        return max(receiver.blocked_until, now)

    async def _deliver(self, event: StatusEvent) -> _Result:
        settings = self.settings()
        secret = _signing_secret(settings, event.client)
        if secret is None:
            return _Result("unsigned")
        problem = check_status_url(event.url, settings.callbacks.allow_private)
        if problem is not None:
            return _Result("refused", problem)
        body = event_body(event)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret.get_secret_value(), body, self.clock()),
            EVENT_ID_HEADER: event_id(event),
        }
        assert self._session is not None
        began = time.monotonic()
        try:
            async with self._session.post(
                event.url,
                data=body,
                headers=headers,
                allow_redirects=False,  # a redirect could point anywhere the check did not see
                timeout=aiohttp.ClientTimeout(total=settings.callbacks.timeout),
            ) as resp:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await read_capped(resp.content, RESPONSE_READ_MAX)
                status = resp.status
        except TimeoutError:
            return _Result("retried", "timeout")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedTarget) or isinstance(exc.__cause__, RefusedTarget):
                return _Result("refused", str(exc.os_error))
            return _Result("retried", "connect")
        except aiohttp.InvalidURL:
            return _Result("refused", "invalid URL")
        except aiohttp.ClientError as exc:
            return _Result("retried", exc.__class__.__name__)
        finally:
            self.metrics.status_callback_duration.observe(time.monotonic() - began)
        if 200 <= status < 300:
            return _Result("delivered")
        if status == 410:
            return _Result("dropped_gone", "HTTP 410")
        return _Result("retried", f"HTTP {status}")

    def _log(
        self, event: StatusEvent, outcome: _Result, retry_at: float | None, now: float
    ) -> None:
        fields = {"receiver": event.receiver, "event_id": event_id(event), "state": event.state}
        if outcome.result == "delivered":
            log.debug("callback_delivered", **fields, attempt=event.attempts + 1)
        elif outcome.result == "retried":
            log.warning(
                "callback_failed",
                **fields,
                error=outcome.detail,
                attempt=event.attempts + 1,
                retry_in=round((retry_at or now) - now, 1),
            )
        elif outcome.result == "unsigned":
            if event.client not in self._unsigned_logged:
                self._unsigned_logged.add(event.client)
                log.error(
                    "callback_unsigned",
                    **fields,
                    client=event.client,
                    detail="the API token its message came with is no longer configured: "
                    "its events are dropped",
                )
        else:
            log.warning("callback_dropped", **fields, reason=outcome.result, error=outcome.detail)


def _claim_time(settings: CallbackSettings) -> float:
    """Long enough for a delivery that first waits for its receiver's turn, then times out."""
    return 3 * settings.timeout + 10.0


def _signing_secret(settings: Settings, client: str) -> SecretStr | None:
    entry = settings.api_clients.get(client)
    if entry is not None:
        return entry.signing_secret
    # Accepted without a token (an open API): callbacks.signing_secret, if any.
    return settings.callback_secret if not client else None
