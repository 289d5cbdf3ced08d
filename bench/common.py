"""Shared pieces: processes (spawned, pinned, stopped), goipd configs, /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

API_TOKEN = "bench-token-0123456789abcdef"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# --- cores ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """goipd (or its baseline) gets `server`; load generators and simulators get `clients`."""

    server: frozenset[int]
    clients: frozenset[int]

    @property
    def pinned(self) -> bool:
        return not self.server & self.clients

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (one core)"
        return (
            f"server on CPU {_cpus(self.server)}, load generator and simulator on CPU "
            f"{_cpus(self.clients)}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def cores() -> Cores:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        every = frozenset(available)
        return Cores(every, every)
    return Cores(frozenset(available[:1]), frozenset(available[1:]))


# --- machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": str(os.cpu_count() or 0),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def goipd_version() -> str:
    """The commit measured, and whether goipd/ had uncommitted changes (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "goipd"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} + uncommitted changes in goipd/" if dirty else commit


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def _stat_cpu_seconds(text: str) -> float:
    """User + system CPU time from a /proc stat line (of a process or of one thread)."""
    # The command name (field 2) may hold spaces; the fields after its closing ")" do not.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of a process so far: its main thread (the event loop) and all the others
    (goipd: the ledger's writer, reader and checkpoint threads; the floor: its writer)."""

    loop: float
    threads: float

    def per_request_us(self, since: CpuSplit, requests: int) -> tuple[float, float]:
        """Microseconds of each per request between `since` and this one."""
        scale = 1e6 / max(requests, 1)
        return (self.loop - since.loop) * scale, (self.threads - since.threads) * scale


def cpu_split(pid: int) -> CpuSplit:
    loop = threads = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        seconds = _stat_cpu_seconds(text)
        if int(task.name) == pid:
            loop += seconds
        else:
            threads += seconds
    return CpuSplit(loop, threads)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- processes ------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    """Children inherit it: 1,000 SMS Servers need 1,000+ sockets on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, argv: Sequence[str], cpus: frozenset[int], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        [sys.executable, *argv],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=child_env(),
    )
    handle.close()
    # Popen returns once the child has exec'd; Python starts no threads before running the
    # module, so every thread the child starts later inherits this mask.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(popen.pid, cpus)
    return Proc(name, popen, log)


async def wait_for_line(proc: Proc, match: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
    """The first JSON line of the process's output for which `match` is true."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            lines = proc.log.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines[seen:]:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(json.JSONDecodeError):
                item = json.loads(line)
                if isinstance(item, dict) and match(item):
                    return item
        seen = len(lines)
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")


async def start_json_server(
    name: str, module: str, args: Sequence[str], cpus: frozenset[int], workdir: Path
) -> Proc:
    """A bench helper process that prints {"port": N} once it listens."""
    proc = spawn(name, ["-m", module, *args], cpus, workdir)
    ready = await wait_for_line(proc, lambda item: "port" in item, timeout=60)
    proc.port = int(ready["port"])
    return proc


# --- goipd ----------------------------------------------------------------------------------


def sim_server_names(count: int) -> list[str]:
    """The names goipd.sim.goip.synthetic_spec gives its servers."""
    return [f"s{index + 1:04d}" for index in range(count)]


def hook_token(name: str) -> str:
    return f"hook-{name}-0123456789abcdef"


def goipd_config(
    db: Path,
    *,
    sim_port: int | None = None,
    servers: int = 0,
    poll_interval: str = "10s",
    timeout: str = "5s",
    routing: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    log_level: str = "info",
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "http": {"listen": f"{HOST}:0", "api_tokens": [API_TOKEN]},
        "storage": {"url": f"sqlite:///{db}"},
        "logging": {"level": log_level, "format": "json"},
        "routing": routing or {},
        "api": api or {},
        "servers": [
            {
                "name": name,
                "url": f"http://{HOST}:{sim_port}/{name}",
                "username": "root",
                "password": f"pw-{name}",
                "poll_interval": poll_interval,
                "timeout": timeout,
                "hook_token": hook_token(name),
            }
            for name in sim_server_names(servers)
        ],
    }
    return config


async def start_goipd(
    config: dict[str, Any], cpus: frozenset[int], workdir: Path, *, timeout: float = 120
) -> Proc:
    """`python -m goipd run` as a subprocess; returns once /readyz answers 200."""
    path = workdir / "goipd.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    proc = spawn("goipd", ["-m", "goipd", "run", "--config", str(path)], cpus, workdir)
    listening = await wait_for_line(
        proc, lambda item: item.get("event") == "http_listening", timeout=timeout
    )
    proc.port = int(str(listening["listen"]).rpartition(":")[2])
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://{HOST}:{proc.port}/readyz") as resp:
                    if resp.status == 200:
                        break
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"goipd not ready:\n{proc.tail()}")
            await asyncio.sleep(0.1)
    # The daemon answers /readyz after its first poll round, a moment before the dispatcher
    # and the other workers are started.
    await wait_for_line(proc, lambda item: item.get("event") == "daemon_ready", timeout=timeout)
    return proc


# --- the ledger, read from outside ------------------------------------------------------------


@contextlib.contextmanager
def ledger_reader(db: Path) -> Iterator[sqlite3.Connection]:
    """Read-only access to goipd's SQLite ledger while goipd runs (WAL allows it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def state_counts(db: Path) -> dict[str, int]:
    with ledger_reader(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state"))


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Sampler:
    """Samples RSS of a process every `every` seconds in the background."""

    pid: int
    every: float = 1.0
    rss: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.rss.append(rss_mb(self.pid))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
