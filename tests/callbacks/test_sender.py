"""The status callback sender against real receivers on 127.0.0.1 and a real SQLite ledger:
events arrive signed and are deleted once delivered; a failing receiver is retried with
back-off until it answers; one that hangs holds up no other receiver; 410 drops, an unknown
token drops unsigned, a host name of loopback is refused at delivery, and old or surplus
events are dropped, each counted."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import yaml
from aiohttp import web

from goipd.callbacks.sender import StatusCallbackSender
from goipd.callbacks.signing import verify
from goipd.config import Settings, parse_settings
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import NewMessage, Outcome, State
from tests.helpers.checks import eventually
from tests.helpers.cloud import serve_routes

TOKEN = "status-token-0123456789"
OTHER = "other-token-0123456789ab"
OTHER_SECRET = "other-signing-secret-01"


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def settings(**callbacks: Any) -> Settings:
    config = {
        "http": {
            "listen": "127.0.0.1:0",
            "api_tokens": [TOKEN, {"token": OTHER, "signing_secret": OTHER_SECRET}],
        },
        "callbacks": {
            "allow_private": True,
            "retry_min": "50ms",
            "retry_max": "200ms",
            "poll_interval": "50ms",
            "timeout": "2s",
            **callbacks,
        },
    }
    return parse_settings(yaml.safe_dump(config))


class Receiver:
    """Records what arrives; answers `statuses` in turn, then 200."""

    def __init__(self, secret: str = TOKEN, statuses: tuple[int, ...] = ()) -> None:
        self.secret = secret
        self.statuses = list(statuses)
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.secret, request.headers.get("Goipd-Signature", ""), body):
            self.bad_signatures += 1
        event = await request.json()
        assert request.headers["Goipd-Event-Id"] == event["id"]
        self.events.append(event)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="x" * 100_000)

    def states(self) -> list[str]:
        return [e["state"] for e in self.events]


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    async with serve_routes(web.post("/status", receiver.handle)) as base:
        yield f"{base}/status?token=secret-in-query"


@asynccontextmanager
async def running(
    ledger: SqliteLedger, config: Settings, **kwargs: Any
) -> AsyncIterator[StatusCallbackSender]:
    sender = StatusCallbackSender(ledger, lambda: config, Metrics(), **kwargs)
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        await sender.stop()
        await asyncio.wait_for(task, 5)


async def fail_all(
    ledger: SqliteLedger, url: str, count: int, token: str = TOKEN, at: float | None = None
) -> None:
    """`count` recipients with `url` as status_url, each failed: one event apiece."""
    numbers = tuple(f"+8869120{i:05d}" for i in range(count))
    new = NewMessage(
        text="hi",
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        client=fingerprint(token),
        status_url=url,
        status_events="failed",
    )
    now = time.time() if at is None else at
    message = (await ledger.accept(new, now)).message
    await ledger.record([Outcome(r.id, State.FAILED) for r in message.recipients], now)


def count(sender: StatusCallbackSender, receiver: str, result: str) -> float:
    value = sender.metrics.status_callbacks.labels(receiver, result)._value.get()
    return float(value)


def receiver_of(url: str) -> str:
    return url.split("/status")[0]


async def until(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    await eventually(lambda: asyncio.sleep(0, check()), within, what)


async def test_events_arrive_signed_and_are_deleted_once_delivered(ledger: SqliteLedger) -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(ledger, settings()) as sender:
        await fail_all(ledger, url, 3)
        await until(lambda: len(receiver.events) == 3, "three events")
        await until(lambda: count(sender, receiver_of(url), "delivered") == 3, "counted")
        assert receiver.bad_signatures == 0
        assert receiver.states() == ["failed"] * 3
        assert len({e["id"] for e in receiver.events}) == 3
        assert await ledger.status_events_pending() == {}


async def test_a_client_with_its_own_signing_secret_signs_with_it(ledger: SqliteLedger) -> None:
    receiver = Receiver(secret=OTHER_SECRET)
    async with receiving(receiver) as url, running(ledger, settings()):
        await fail_all(ledger, url, 1, token=OTHER)
        await until(lambda: len(receiver.events) == 1, "the event")
        assert receiver.bad_signatures == 0


async def test_a_failing_receiver_is_retried_until_it_answers(ledger: SqliteLedger) -> None:
    receiver = Receiver(statuses=(500, 503, 500))
    async with receiving(receiver) as url, running(ledger, settings()) as sender:
        await fail_all(ledger, url, 1)
        await until(lambda: count(sender, receiver_of(url), "delivered") == 1, "delivered")
        assert count(sender, receiver_of(url), "retried") == 3
        assert [e["attempt"] for e in receiver.events] == [1, 2, 3, 4]
        assert len({e["id"] for e in receiver.events}) == 1
        assert await ledger.status_events_pending() == {}


async def test_410_gone_drops_the_event(ledger: SqliteLedger) -> None:
    receiver = Receiver(statuses=(410,))
    async with receiving(receiver) as url, running(ledger, settings()) as sender:
        await fail_all(ledger, url, 1)
        await until(lambda: count(sender, receiver_of(url), "dropped_gone") == 1, "dropped")
        await asyncio.sleep(0.2)
        assert len(receiver.events) == 1
        assert await ledger.status_events_pending() == {}


async def test_a_hanging_receiver_holds_up_no_other(ledger: SqliteLedger) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections (the kernel does), never answers
    dead_url = f"http://127.0.0.1:{listener.getsockname()[1]}/status"
    receiver = Receiver()
    config = settings(timeout="1s", max_in_flight=4, max_in_flight_per_receiver=2)
    try:
        async with receiving(receiver) as url, running(ledger, config) as sender:
            await fail_all(ledger, dead_url, 20)
            await asyncio.sleep(0.2)  # the dead receiver's first POSTs are under way
            started = time.monotonic()
            await fail_all(ledger, url, 10, at=time.time())
            await until(lambda: len(receiver.events) == 10, "the live receiver's events")
            assert time.monotonic() - started < 0.9  # before the dead one's first timeout
            dead = receiver_of(dead_url)
            await until(lambda: count(sender, dead, "retried") >= 2, "the dead one retried")
            # Backed off as a whole: its 20 events are not each tried in turn.
            await asyncio.sleep(0.5)
            assert count(sender, dead, "retried") <= 6
            assert (await ledger.status_events_pending())[dead] == 20
    finally:
        listener.close()


async def test_an_unknown_token_cannot_sign_and_its_events_are_dropped(
    ledger: SqliteLedger,
) -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(ledger, settings()) as sender:
        await fail_all(ledger, url, 2, token="a-token-no-longer-configured")
        await until(lambda: count(sender, receiver_of(url), "unsigned") == 2, "unsigned")
        assert receiver.events == []
        assert await ledger.status_events_pending() == {}


async def test_a_host_name_of_loopback_is_refused_at_delivery(ledger: SqliteLedger) -> None:
    name = socket.gethostname()
    if not all(info[4][0].startswith("127.") for info in socket.getaddrinfo(name, 80)):
        pytest.skip("this host's name does not resolve to loopback")
    receiver = Receiver()
    async with receiving(receiver) as url, running(ledger, settings(allow_private=False)) as sender:
        sneaky = url.replace("127.0.0.1", name)
        await fail_all(ledger, sneaky, 1)
        await until(lambda: count(sender, receiver_of(sneaky), "refused") == 1, "refused")
        assert receiver.events == []
        assert await ledger.status_events_pending() == {}


async def test_old_and_surplus_events_are_dropped_and_counted(ledger: SqliteLedger) -> None:
    receiver = Receiver(statuses=(500,) * 100)
    config = settings(
        give_up_after="1h", max_pending_per_receiver=3, retry_min="10s", retry_max="10s"
    )
    async with receiving(receiver) as url:
        await fail_all(ledger, url, 2, at=time.time() - 7200)
        await fail_all(ledger, url, 5)
        async with running(ledger, config) as sender:
            key = receiver_of(url)
            await until(lambda: count(sender, key, "given_up") == 2, "given up")
            await until(lambda: count(sender, key, "dropped_over_cap") == 2, "capped")
            pending = sender.metrics.status_callbacks_pending.labels(key)._value.get()
            assert pending == 3
