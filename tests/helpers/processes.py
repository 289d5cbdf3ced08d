"""goipd as its own process (`python -m goipd run`): a free loopback port, its config, starting,
killing and waiting for it, and reading every recipient's final state through its API."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import API_TOKEN

PORTS_FROM = 20_000
"""Ports for processes a test starts on a port it chose come from 20000-31999, below Linux's
default ephemeral range (32768-60999): no client connection on the machine takes one between
the check here and the process binding it. (A port asked of the kernel with bind-to-0 is an
ephemeral one: once closed, the next outgoing connection of any test may get it.)"""
PORT_BLOCK = 1000
"""Each pytest-xdist worker picks in its own block, so two workers never pick the same port; a
run without xdist has the first block."""
_handed_out: set[int] = set()
_pick = random.Random()  # not the global one: a test that seeds that must not steer the picks


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under xdist
    index = int(worker[2:]) + 1 if worker[:2] == "gw" and worker[2:].isdigit() else 0
    low = PORTS_FROM + index % 12 * PORT_BLOCK
    return range(low, low + PORT_BLOCK)


def free_port() -> int:
    """A loopback port nothing listens on, for a process the test starts: picked at random in
    this worker's block, never handed out twice in one run, and checked free by binding it (a
    port some other program, or another test run on the machine, holds is skipped)."""
    block = _port_block()
    candidates = [port for port in block if port not in _handed_out]
    if not candidates:  # the whole block was handed out: ports of finished tests are free again
        _handed_out.difference_update(block)
        candidates = list(block)
    _pick.shuffle(candidates)
    for port in candidates:
        _handed_out.add(port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {block.start}-{block.stop - 1}")


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


async def lines_of(http: aiohttp.ClientSession, process: Goipd) -> dict[str, dict[str, Any]]:
    """The lines of the goipd `process`, by line id (GET /api/v1/lines)."""
    async with http.get(f"http://127.0.0.1:{process.port}/api/v1/lines") as resp:
        assert resp.status == 200
        return {line["line"]: line for line in (await resp.json())["lines"]}


async def metrics_of(http: aiohttp.ClientSession, process: Goipd) -> str:
    async with http.get(f"http://127.0.0.1:{process.port}/metrics") as resp:
        return await resp.text()


def goipd_cli(process: Goipd, token: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`goipd ARGS...` as a process, against the goipd `process` with the token in `token`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "goipd",
            *args,
            "--url",
            f"http://127.0.0.1:{process.port}",
            "--token-file",
            str(token),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
