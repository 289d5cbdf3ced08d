"""Status callbacks end to end, with goipd as its own process in front of the simulated fleet
and a receiver on 127.0.0.1:

- every state change asked for arrives, signed: submitted, sent and delivered (the simulator's
  push reports), failed (a recipient error), cancelled (DELETE of a scheduled message) and
  expired (validity over while no line can send);
- a receiver answering 500 gets everything once it answers 200 again, retries counted, even
  across a SIGKILL of goipd: events stored and not yet delivered are delivered after restart;
- a receiver that never answers slows no sending: messages without callbacks are sent at
  normal speed while its events back off and pile up;
- a loopback status_url is refused at the API (422), and a host name of loopback at delivery.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from goipd.app import Daemon
from goipd.callbacks.signing import verify
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, daemon_config, fleet_spec
from tests.helpers.pipeline import send, wait_states
from tests.helpers.processes import Goipd, free_port, process_config, start_process

ALL = ["submitted", "sent", "delivered", "failed", "cancelled", "expired"]
FAST = {
    "allow_private": True,
    "timeout": "1s",
    "retry_min": "200ms",
    "retry_max": "500ms",
    "poll_interval": "100ms",
}


class Receiver:
    """A status_url on 127.0.0.1: checks every signature, answers `status`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(API_TOKEN, request.headers.get("Goipd-Signature", ""), body):
            self.bad_signatures += 1
        if self.status == 200:
            self.events.append(await request.json())
        return web.Response(status=self.status)

    def seen(self, message_id: str) -> set[str]:
        return {e["state"] for e in self.events if e["message_id"] == message_id}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/status", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/status?ref=crm"
    yield found
    await runner.cleanup()


async def run_goipd(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> tuple[Goipd, RunningSimulator, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sim = await simulator(fleet_spec(push_base=base, hq=[{"line_id": "G101"}]))
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        routing={"line_rate_per_minute": 600, "retry_delay": "200ms"},
        callbacks=FAST,
    )
    process = start_process(config, port, tmp_path)
    started.append(process)
    process.start()
    await process.ready(http)
    return process, sim, base


async def metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        return await resp.text()


async def lines_usable(http: aiohttp.ClientSession, base: str, usable: bool) -> None:
    async def seen() -> bool:
        async with http.get(f"{base}/api/v1/lines") as resp:
            body = await resp.json()
        return bool(body["lines"]) and all(line["healthy"] is usable for line in body["lines"])

    await eventually(seen, 10, f"goipd sees every line {'usable' if usable else 'down'}")


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_every_state_change_asked_for_arrives_signed(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    _, sim, base = await run_goipd(simulator, tmp_path, started, http)
    asked = {"status_url": receiver.url, "status_events": ALL}
    delivered = await send(http, base, {"to": "+886911000001", "text": "hi", **asked})
    await wait_states(http, base, delivered["id"], {"delivered"})
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"fail_code": "1"})
    failed = await send(http, base, {"to": "+886911000002", "text": "hi", **asked})
    await wait_states(http, base, failed["id"], {"failed"})
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"fail_code": None})
    scheduled = await send(
        http, base, {"to": "+886911000003", "text": "later", **asked} | {"send_at": _in(3600)}
    )
    async with http.delete(f"{base}/api/v1/messages/{scheduled['id']}") as resp:
        assert resp.status == 200
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT"})
    await lines_usable(http, base, False)
    expiring = await send(
        http, base, {"to": "+886911000004", "text": "soon", "expires_at": _in(1.5), **asked}
    )
    # Only the states asked for: this one wants `delivered` alone.
    picky = await send(
        http,
        base,
        {
            "to": "+886911000005",
            "text": "x",
            "status_url": receiver.url,
            "status_events": ["delivered"],
        },
    )

    expected = {
        delivered["id"]: {"submitted", "sent", "delivered"},
        failed["id"]: {"submitted", "failed"},
        scheduled["id"]: {"cancelled"},
        expiring["id"]: {"expired"},
    }

    async def all_arrived() -> bool:
        return all(receiver.seen(m) >= states for m, states in expected.items())

    await eventually(all_arrived, 10, "every state change asked for")
    assert receiver.bad_signatures == 0
    for message_id, states in expected.items():
        assert receiver.seen(message_id) <= states | {"submitted"}, message_id
    assert receiver.seen(picky["id"]) == set()
    first = next(e for e in receiver.events if e["state"] == "delivered")
    assert first["type"] == "recipient.delivered"
    assert first["to"] == "+886911000001"
    assert (first["route"], first["server"], first["line"]) == ("goip", "hq", "G101")
    assert first["id"].startswith("evt_") and first["attempt"] == 1
    gone = next(e for e in receiver.events if e["state"] == "expired")
    assert gone["error"]["code"] == "validity"


async def test_events_wait_for_a_failing_receiver_and_survive_a_sigkill(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    process, _, base = await run_goipd(simulator, tmp_path, started, http)
    receiver.status = 500
    numbers = [f"+8869110001{i:02d}" for i in range(5)]
    sent = await send(http, base, {"to": numbers, "text": "hi", "status_url": receiver.url})
    await wait_states(http, base, sent["id"], {"delivered"})
    receiver_key = receiver.url.split("/status")[0]

    async def retried() -> bool:
        value = sample(
            await metrics(http, base),
            "goipd_status_callbacks_total",
            receiver=receiver_key,
            result="retried",
        )
        return (value or 0) >= 3

    await eventually(retried, 5, "deliveries retried")
    process.kill()
    receiver.status = 200
    process.start()
    await process.ready(http)

    async def everything() -> bool:
        return all(
            {e["state"] for e in receiver.events if e["to"] == n} >= {"sent", "delivered"}
            for n in numbers
        )

    await eventually(everything, 10, "every stored event delivered after the restart")
    assert receiver.bad_signatures == 0
    # Those tried before the kill carry their attempt count on (stored, not in memory).
    assert sum(e["attempt"] > 1 for e in receiver.events) >= 3

    async def all_counted() -> bool:
        # Counted once the 200 is recorded in the ledger, a group commit after the receiver
        # has the event: read right after the last event arrived, it may show 8 or 9.
        text = await metrics(http, base)
        return (
            sample(text, "goipd_status_callbacks_total", receiver=receiver_key, result="delivered")
            == 10
        )

    await eventually(all_counted, 5, "every delivery counted once")


async def test_a_receiver_that_never_answers_slows_no_sending(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    _, _, base = await run_goipd(simulator, tmp_path, started, http)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # the kernel accepts; nothing ever answers
    dead = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        began = time.monotonic()
        with_callbacks = [
            await send(
                http, base, {"to": f"+8869110002{i:02d}", "text": "a", "status_url": dead + "/s"}
            )
            for i in range(10)
        ]
        plain = [
            await send(http, base, {"to": f"+8869110003{i:02d}", "text": "b"}) for i in range(10)
        ]
        for sent in plain + with_callbacks:
            await wait_states(http, base, sent["id"], {"sent", "delivered"}, within=5)
        # Sent at the pace of the line, not of callbacks that time out after 10 s.
        assert time.monotonic() - began < 5

        async def timed_out() -> bool:
            text = await metrics(http, base)
            return (
                sample(text, "goipd_status_callbacks_total", receiver=dead, result="retried") or 0
            ) >= 1

        await eventually(timed_out, 5, "the dead receiver's deliveries timed out")
        text = await metrics(http, base)
        assert (
            sample(text, "goipd_status_callbacks_total", receiver=dead, result="delivered") is None
        )
    finally:
        listener.close()


async def test_loopback_targets_are_refused_at_the_api_and_at_delivery(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    daemon = await daemon_factory(
        daemon_config(sim, ["hq"], tmp_path, callbacks={**FAST, "allow_private": False})
    )
    base = f"http://127.0.0.1:{daemon.port}"
    async with http.post(
        f"{base}/api/v1/messages",
        json={"to": "+886911000001", "text": "hi", "status_url": receiver.url},
    ) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 422, problem
        assert "127.0.0.1 is a loopback address" in problem["detail"]
    name = socket.gethostname()
    if not all(info[4][0].startswith("127.") for info in socket.getaddrinfo(name, 80)):
        pytest.skip("this host's name does not resolve to loopback")
    sneaky = receiver.url.replace("127.0.0.1", name)
    sent = await send(
        http,
        base,
        {"to": "+886911000001", "text": "hi", "status_url": sneaky, "status_events": ["submitted"]},
    )
    assert sent["id"]
    key = sneaky.split("/status")[0]

    async def refused() -> bool:
        return (
            sample(
                await metrics(http, base),
                "goipd_status_callbacks_total",
                receiver=key,
                result="refused",
            )
            or 0
        ) >= 1

    await eventually(refused, 10, "the delivery refused")
    assert receiver.events == []
