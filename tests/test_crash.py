"""goipd is SIGKILLed again and again while 1,000 messages flow, their send reports are pushed
back, inbound SMS arrive and the fleet is polled. Afterwards every accepted recipient reaches a
final state, none is lost, every inbound SMS goipd acknowledged is in the ledger, and duplicates
stay within the documented bound: only a recipient whose sendsms call was cut by the kill can be
sent twice, and it then shows attempts >= 2 in its history."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from goipd.sim.goip import RunningSimulator
from tests.conftest import API_TOKEN, control, fleet_spec

pytestmark = pytest.mark.slow
MESSAGES = 1000
KILLS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Goipd:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goipd", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    async def ready(self, session: aiohttp.ClientSession, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"goipd not ready; log:\n{self.log.read_text()[-3000:]}")


async def submit(
    session: aiohttp.ClientSession, daemon: Goipd, index: int, accepted: dict[str, str]
) -> None:
    """Send one message, retrying through kills with the same idempotency key."""
    body = {
        "to": [f"+8869{index:08d}"],
        "text": f"crash test {index}",
        "idempotency_key": f"crash-{index}",
    }
    while True:
        try:
            async with session.post(
                f"http://127.0.0.1:{daemon.port}/api/v1/messages", json=body
            ) as resp:
                if resp.status in (200, 202):
                    accepted[body["to"][0]] = (await resp.json())["id"]
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.05)


async def receive_inbound(
    session: aiohttp.ClientSession,
    sim: RunningSimulator,
    acknowledged: list[str],
    stop: asyncio.Event,
) -> None:
    """SMS keep arriving on a line, through the kills; the simulator says which ones goipd
    acknowledged (a 200 to the push): those must never be lost."""
    index = 0
    while not stop.is_set():
        text = f"inbound {index}"
        index += 1
        outcome = await control(
            session,
            sim,
            "POST",
            "servers/hq/inbound",
            {"goip_line": "G100", "from_number": "+886900000001", "content": text},
        )
        if outcome["push"] == "ok":
            acknowledged.append(text)
        await asyncio.sleep(0.02)


async def stored_inbound(session: aiohttp.ClientSession, port: int) -> set[str]:
    texts: set[str] = set()
    before = None
    while True:
        url = f"http://127.0.0.1:{port}/api/v1/inbound?limit=1000"
        async with session.get(url + (f"&before={before}" if before else "")) as resp:
            assert resp.status == 200
            page = await resp.json()
        texts.update(item["text"] for item in page["inbound"])
        if not page["inbound"] or page.get("next") is None:
            return texts
        before = page["next"]


def process_config(
    sim: RunningSimulator, port: int, storage: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    """The config of a goipd process on `port` in front of the simulator's `hq`."""
    config: dict[str, Any] = {
        "http": {"listen": f"127.0.0.1:{port}", "api_tokens": [API_TOKEN]},
        "storage": storage,
        "logging": {"format": "json"},
        "routing": {"line_rate_per_minute": 600},
        "api": {"duplicate_window": "0s"},
        "servers": [
            {
                "name": "hq",
                "url": sim.base_url("hq"),
                "username": "root",
                "password": "pw-hq",
                "poll_interval": "1s",
                "timeout": "500ms",
                "hook_token": "hook-hq-0123456789",
            }
        ],
    }
    return config | overrides


def start_process(config: dict[str, Any], port: int, directory: Path, name: str = "goipd") -> Goipd:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return Goipd(path, port, directory / f"{name}.log")


async def recipient_states(session: aiohttp.ClientSession, port: int) -> dict[str, dict[str, Any]]:
    """Every recipient the goipd on `port` holds, by number (all pages of the message list)."""
    states: dict[str, dict[str, Any]] = {}
    after = None
    while True:
        url = f"http://127.0.0.1:{port}/api/v1/messages?limit=1000"
        async with session.get(url + (f"&after={after}" if after else "")) as resp:
            assert resp.status == 200
            page = await resp.json()
        for message in page["messages"]:
            for r in message["recipients"]:
                states[r["to"]] = r
        after = page["next"]
        if after is None:
            return states


async def final_states(
    session: aiohttp.ClientSession, port: int, accepted: Collection[str]
) -> dict[str, dict[str, Any]]:
    """Wait (60 s at most) until every recipient is final, then check that every accepted
    number is there and none failed."""
    deadline = time.monotonic() + 60
    while True:
        states = await recipient_states(session, port)
        # `sent` is terminal for dispatch: a delivery receipt may follow, or never come (a
        # receipt pushed while goipd was down is lost; carriers do not always send one).
        pending = [
            n for n, r in states.items() if r["state"] not in ("sent", "delivered", "failed")
        ]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} recipients not final, e.g. {states[pending[0]]}"
    assert set(states) == set(accepted), "an accepted message is missing from the ledger"
    failed = [r for r in states.values() if r["state"] == "failed"]
    assert not failed, failed[:3]
    return states


async def test_sigkill_loses_nothing_and_bounds_duplicates(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    port = free_port()
    lines = [{"line_id": f"G{100 + i}"} for i in range(20)]
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", hq=lines))
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
        reconcile={"interval": "1s", "query_after": "1s"},
    )
    daemon = start_process(config, port, tmp_path)
    accepted: dict[str, str] = {}
    rng = random.Random(1)
    try:
        await run_workload(daemon, sim, port, accepted, rng)
    finally:
        daemon.ensure_dead()


async def run_workload(
    daemon: Goipd, sim: RunningSimulator, port: int, accepted: dict[str, str], rng: random.Random
) -> None:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as session:
        daemon.start()
        await daemon.ready(session)
        sem = asyncio.Semaphore(16)

        async def limited(i: int) -> None:
            async with sem:
                await submit(session, daemon, i, accepted)

        acknowledged: list[str] = []
        stop_inbound = asyncio.Event()
        inbound = asyncio.create_task(receive_inbound(session, sim, acknowledged, stop_inbound))
        producer = asyncio.gather(*(limited(i) for i in range(MESSAGES)))
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            daemon.kill()
            await asyncio.sleep(0.1)
            daemon.start()
            await daemon.ready(session)
        await producer
        stop_inbound.set()
        await inbound
        assert len(accepted) == MESSAGES
        stored = await stored_inbound(session, port)
        missing = [text for text in acknowledged if text not in stored]
        assert len(acknowledged) > 20, "too few inbound SMS got through to test anything"
        assert not missing, f"{len(missing)} acknowledged inbound SMS lost, e.g. {missing[0]}"

        states = await final_states(session, port, accepted)
        sent = Counter(
            entry["number"] for entry in await control(session, sim, "GET", "servers/hq/sent")
        )
        assert set(sent) == set(accepted), "a recipient was never sent"
        duplicates = {number: count for number, count in sent.items() if count > 1}
        for number in duplicates:
            assert states[number]["attempts"] >= 2, (number, states[number])
        # Bound: only sends cut by a kill repeat, at most the in-flight window per kill.
        assert len(duplicates) <= KILLS * 64
        print(f"\n{len(duplicates)} duplicates over {KILLS} kills")
        assert daemon.stop() == 0
