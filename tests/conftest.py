"""Shared fixtures: a simulated fleet and goipd daemons over real loopback HTTP."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from goipd.app import Daemon
from goipd.config import load_settings
from goipd.ledger.sqlite import SqliteLedger
from goipd.sim.goip import RunningSimulator, SimFleet, start_simulator

API_TOKEN = "test-token-0123456789abcdef"
POLL = 0.5
"""Poll interval used by tests; assertions allow one interval plus the request timeout."""


def fleet_spec(push_base: str | None = None, **servers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": name,
                "username": "root",
                "password": f"pw-{name}",
                "lines": lines,
                "send_delay": 0.02,
                "status_push_url": (
                    f"{push_base}/hooks/goip/{name}/status?token=hook-{name}-0123456789"
                    if push_base
                    else None
                ),
                "inbound_push_url": (
                    f"{push_base}/hooks/goip/{name}/inbound?token=hook-{name}-0123456789"
                    if push_base
                    else None
                ),
            }
            for name, lines in servers.items()
        ]
    }


@pytest.fixture
async def simulator() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[RunningSimulator]]]:
    started: list[RunningSimulator] = []

    async def start(spec: dict[str, Any]) -> RunningSimulator:
        running = await start_simulator(SimFleet.from_spec(spec))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


def daemon_config(
    sim: RunningSimulator, names: list[str], tmp_path: Path, **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0", "api_tokens": [API_TOKEN]},
        "storage": {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        "logging": {"level": "debug", "format": "json"},
        "polling": {"jitter": 0.0, "backoff_max": "1s"},
        "reconcile": {"interval": "1s", "query_after": "2s", "report_deadline": "30s"},
        "routing": {"retry_delay": "200ms"},
        "servers": [
            {
                "name": name,
                "url": sim.base_url(name),
                "username": "root",
                "password": f"pw-{name}",
                "poll_interval": f"{int(POLL * 1000)}ms",
                "timeout": "300ms",
                "hook_token": f"hook-{name}-0123456789",
            }
            for name in names
        ],
    }
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    started: list[Daemon] = []

    async def start(config: dict[str, Any]) -> Daemon:
        path = tmp_path / f"goipd-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        path.chmod(0o600)
        daemon = Daemon(load_settings(path))
        await daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if not daemon.stopped.is_set():
            await daemon.stop(grace=2.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        yield session


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `check` until true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.1f}s: {what}")
        await asyncio.sleep(0.05)


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def control(
    session: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str, body: Any = None
) -> Any:
    url = f"http://127.0.0.1:{sim.port}/_control/{path}"
    async with session.request(method, url, json=body) as resp:
        assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a disk that really fills up."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    """A real SQLite ledger in the test's directory (modules with their own `ledger` fixture,
    e.g. both backends, override it)."""
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    yield store
    await store.close()


async def set_read_only(store: SqliteLedger, on: bool) -> None:
    """Make the writer connection itself refuse writes: the sqlite3.OperationalError
    ("readonly") path of a read-only or immutable file, without needing privileges."""
    writer, pool = store._writer, store._writer_pool
    assert writer is not None and pool is not None
    pragma = f"PRAGMA query_only={'ON' if on else 'OFF'}"
    await asyncio.get_running_loop().run_in_executor(pool, writer.execute, pragma)
