"""Shared fixtures: a simulated fleet, goipd daemons over real loopback HTTP, an HTTP client
with the API token, a real SQLite ledger and a small real disk. Plain helpers are in
tests/helpers/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from goipd.app import Daemon
from goipd.config import load_settings
from goipd.ledger.sqlite import SqliteLedger
from goipd.sim.goip import RunningSimulator, SimFleet, start_simulator
from tests.helpers.daemons import API_TOKEN

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs the tests in parallel), the long tests first: the
    slow-marked ones, then the whole-process ones in tests/system/. Workers take tests in this
    order as they free up, so the quick unit tests fill the gaps at the end instead of one
    worker starting a 30-second soak when the others are done. Run alone, the order stays."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if TESTS / "system" in item.path.parents else 2

    items.sort(key=rank)  # stable: the collection order within each rank


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


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    """A real SQLite ledger in the test's directory (modules with their own `ledger` fixture,
    e.g. both backends, override it)."""
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    yield store
    await store.close()
