"""Soak: goipd (a real process) under a steady mix of sends, push reports, inbound SMS and polling.
Memory must level off, file descriptors must not leak, and the queue must drain.

`make test` runs it for GOIPD_SOAK_SECONDS (default 30); the full soak is 10 minutes:
`GOIPD_SOAK_SECONDS=600 .venv/bin/pytest -m slow tests/system/test_soak.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.sim.goip import RunningSimulator
from goipd.upstream.goip import POOL_SIZES
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.processes import free_port, process_config, start_process

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("GOIPD_SOAK_SECONDS", "30"))
SEND_RATE = 40.0
"""Messages per second, each to one recipient."""
INBOUND_RATE = 5.0
ESTABLISHED = "01"
"""The state column of /proc/net/tcp for an established connection."""
RSS_GROWTH_LIMIT = 24 * 1024 * 1024
"""After warm-up, resident memory may grow this much at most (caches filling up to their caps:
dispatch's body cache, SQLite's page cache)."""
FD_GROWTH_LIMIT = sum(POOL_SIZES.values())
"""After warm-up, open file descriptors may vary this much at most: the connections goipd keeps
to the one SMS Server (one pool for sends, one for polls and queries) open and close with the
load; a leak grows beyond them. Connections goipd accepted that are still established are not
counted (see `open_fds`)."""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int, port: int) -> int:
    """goipd's open file descriptors, less the connections it accepted on `port` that are still
    established. Those are held open by the clients (this test's session, the simulator's
    pushes): their keep-alive pools grow to the most requests they had in flight at once, which
    on a loaded machine (tests running in parallel) is whatever the scheduler makes it, and
    keep that size for a while. An accepted connection goipd fails to close is still counted
    once its client has closed it (CLOSE_WAIT)."""
    fds = os.listdir(f"/proc/{pid}/fd")
    held_by_clients: set[str] = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and remote_port and fields[3] == ESTABLISHED:
                held_by_clients.add(f"socket:[{fields[9]}]")
    accepted = 0
    for fd in fds:
        try:
            accepted += os.readlink(f"/proc/{pid}/fd/{fd}") in held_by_clients
        except OSError:  # closed meanwhile
            pass
    return len(fds) - accepted


async def paced(rate: float, seconds: float, action: Callable[[int], Awaitable[None]]) -> int:
    """Run `action(i)` `rate` times a second for `seconds`, without waiting for each."""
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while time.monotonic() - started < seconds:
        task = asyncio.create_task(action(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
        await asyncio.sleep(max(started + index / rate - time.monotonic(), 0))
    await asyncio.gather(*tasks)
    return index


async def test_soak_memory_flat_no_fd_leak_queue_drains(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    port = free_port()
    lines = [{"line_id": f"G{100 + i}"} for i in range(16)]
    sim = await simulator(fleet_spec(f"http://127.0.0.1:{port}", hq=lines))
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        logging={"format": "json", "level": "warning"},
    )
    daemon = start_process(config, port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    samples: list[tuple[float, int, int]] = []
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        daemon.start()
        try:
            await daemon.ready(session)
            assert daemon.proc is not None
            pid = daemon.proc.pid

            async def send(index: int) -> None:
                body = {"to": [f"+8869{index % 10**8:08d}"], "text": f"soak {index}"}
                async with session.post(f"{base}/api/v1/messages", json=body) as resp:
                    if resp.status != 202:
                        failures.append(f"send {index}: {resp.status}")

            async def receive(index: int) -> None:
                reply = await control(
                    session,
                    sim,
                    "POST",
                    "servers/hq/inbound",
                    {"goip_line": "G100", "from_number": "+886900000001", "content": f"in {index}"},
                )
                if reply["push"] != "ok":
                    failures.append(f"inbound {index}: {reply['push']}")

            async def measure() -> None:
                started = time.monotonic()
                while time.monotonic() - started < SECONDS:
                    samples.append(
                        (time.monotonic() - started, rss_bytes(pid), open_fds(pid, port))
                    )
                    await asyncio.sleep(max(SECONDS / 30, 0.5))

            sent, _, _ = await asyncio.gather(
                paced(SEND_RATE, SECONDS, send),
                paced(INBOUND_RATE, SECONDS, receive),
                measure(),
            )
            assert not failures, failures[:5]

            async def drained() -> bool:
                async with session.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                pending = [
                    line
                    for line in text.splitlines()
                    if line.startswith("goipd_queue_messages{")
                    and any(f'state="{s}"' in line for s in ("queued", "dispatching", "submitted"))
                    and float(line.rsplit(" ", 1)[1]) > 0
                ]
                return not pending

            deadline = time.monotonic() + 60
            while not await drained():
                assert time.monotonic() < deadline, "the queue did not drain after the load"
                await asyncio.sleep(0.5)
        finally:
            daemon.ensure_dead()
    assert sent >= SEND_RATE * SECONDS * 0.9
    warm = [s for s in samples if s[0] >= SECONDS / 3]
    assert len(warm) >= 3, samples
    rss_growth = max(s[1] for s in warm) - warm[0][1]
    fd_growth = max(s[2] for s in warm) - min(s[2] for s in warm)
    print(
        f"soak {SECONDS:.0f}s: {sent} sends, RSS {warm[0][1] >> 20} -> "
        f"{max(s[1] for s in warm) >> 20} MiB, fds {min(s[2] for s in warm)}-"
        f"{max(s[2] for s in warm)}"
    )
    assert rss_growth < RSS_GROWTH_LIMIT, f"RSS grew {rss_growth >> 20} MiB after warm-up"
    assert fd_growth <= FD_GROWTH_LIMIT, f"open file descriptors grew by {fd_growth}"
