"""What every scenario shares: sizes (full or --quick), the load generator and baseline runs."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import HOST, Cores, Proc, cpu_split, spawn, start_json_server
from bench.profile import profiling
from bench.results import Row


@dataclass(frozen=True)
class Params:
    """Sizes of every scenario. FULL is what the targets are about; QUICK keeps the harness
    from rotting (the smoke test) and runs each scenario in a few seconds."""

    quick: bool = False
    # 1. durable accept
    accept_connections: int = 32
    accept_warmup: float = 2.0
    accept_duration: float = 8.0
    accept_requests: int = 0
    """0: closed loop for warm-up + duration; else exactly this many requests."""
    accept_pairs: int = 3
    """Back-to-back (floor, goipd accepting alone) pairs the floor target is judged on."""
    accept_pair_warmup: float = 1.0
    accept_pair_duration: float = 4.0
    accept_bulk_size: int = 1000
    accept_bulk_connections: int = 8
    accept_bulk_duration: float = 6.0
    accept_bulk_requests: int = 0
    # 2. push ingestion
    push_reports: int = 20_000
    push_connections: int = 32
    push_servers: int = 32
    push_lines: int = 32
    # 3. dispatch throughput
    dispatch_recipients: int = 20_000
    dispatch_servers: int = 32
    dispatch_lines: int = 32
    dispatch_bulk_size: int = 1000
    # 4. polling scale
    poll_servers: int = 1000
    poll_lines: int = 32
    poll_interval: float = 10.0
    poll_duration: float = 120.0
    poll_idle_window: float = 10.0
    # 5. scrape cost
    scrape_servers: int = 1000
    scrape_lines: int = 32
    scrapes: int = 10
    stall_rate: float = 200.0
    stall_duration: float = 15.0
    # 6. routing decision
    route_servers: int = 1000
    route_lines: int = 32
    route_iterations: int = 100_000


FULL = Params()
QUICK = Params(
    quick=True,
    accept_connections=8,
    accept_warmup=0.0,
    accept_duration=0.0,
    accept_requests=200,
    accept_pairs=1,
    accept_bulk_size=50,
    accept_bulk_connections=4,
    accept_bulk_duration=0.0,
    accept_bulk_requests=20,
    push_reports=200,
    push_connections=8,
    push_servers=4,
    push_lines=8,
    dispatch_recipients=200,
    dispatch_servers=4,
    dispatch_lines=8,
    dispatch_bulk_size=100,
    poll_servers=10,
    poll_lines=32,
    poll_interval=1.0,
    poll_duration=5.0,
    poll_idle_window=1.0,
    scrape_servers=10,
    scrape_lines=32,
    scrapes=3,
    stall_rate=50.0,
    stall_duration=2.0,
    route_servers=10,
    route_lines=32,
    route_iterations=5_000,
)


@dataclass
class Ctx:
    params: Params
    cores: Cores
    workdir: Path
    profile: Path | None = None
    """Directory for py-spy profiles of goipd's measured phases (--profile), or None."""

    def profiling(self, name: str, pid: int) -> AbstractAsyncContextManager[None]:
        return profiling(self.profile, name, pid, self.cores.clients)


# --- load generator and baseline ---------------------------------------------------------------


async def wait_exit(proc: Proc) -> int:
    while proc.popen.poll() is None:
        await asyncio.sleep(0.05)
    return proc.popen.returncode


async def loadgen(
    ctx: Ctx, name: str, spec: dict[str, Any], cpus: frozenset[int] | None = None
) -> dict[str, Any]:
    """Run bench.loadgen with `spec` (on the client cores unless told); its JSON summary."""
    path = ctx.workdir / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    where = ctx.cores.clients if cpus is None else cpus
    proc = spawn(name, ["-m", "bench.loadgen", str(path)], where, ctx.workdir)
    code = await wait_exit(proc)
    lines = [line for line in proc.log.read_text().splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"load generator {name} failed ({code}):\n{proc.tail()}")
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


async def baseline_run(
    ctx: Ctx, name: str, spec: Callable[[int], dict[str, Any]], durable: bool = False
) -> dict[str, Any]:
    """The same load against bench.baseline on goipd's core; `durable`: the floor, which
    writes every request to SQLite before answering (bench.baseline --store)."""
    args = ["--store", str(ctx.workdir / f"{name}.db")] if durable else []
    proc = await start_json_server(name, "bench.baseline", args, ctx.cores.server, ctx.workdir)
    try:
        async with ctx.profiling(name, proc.pid):
            before = cpu_split(proc.pid)
            stats = await loadgen(ctx, f"{name}-load", spec(proc.port))
            stats["loop_us"], stats["threads_us"] = cpu_split(proc.pid).per_request_us(
                before, stats["total"]
            )
            return stats
    finally:
        await proc.stop()


def floor_rows(
    stats: dict[str, Any], floor: dict[str, Any], base_rps: float, unit: str, target: float
) -> list[Row]:
    """The durable floor beside the bare handler, and goipd against the floor (`target`: the
    least ratio the issue asks for)."""
    return [
        floor_row(floor, base_rps, unit),
        Row(
            "throughput against the durable floor (baseline column: the floor)",
            rate(stats["rps"], unit),
            rate(floor["rps"], unit),
            ratio(stats["rps"], floor["rps"]),
            f">= {target:.2f}x the floor",
            stats["rps"] >= target * floor["rps"],
        ),
    ]


def cpu_per_request_rows(
    goipd_runs: Sequence[dict[str, Any]], floor_runs: Sequence[dict[str, Any]], unit: str
) -> list[Row]:
    """Where goipd's CPU per request goes beside the floor's (each averaged over its runs):
    its event loop thread, and its other threads (the ledger's writer, reader and
    checkpoints; the floor's writer). Read from /proc per thread, so unlike a py-spy profile
    it counts SQLite's own work and the kernel's (WAL writes, fsync) as well as Python's."""
    rows = []
    for key, what in (("loop_us", "event loop thread"), ("threads_us", "other threads")):
        goipd = statistics.mean(run[key] for run in goipd_runs)
        floor = statistics.mean(run[key] for run in floor_runs)
        rows.append(
            Row(
                f"CPU per {unit}, {what} (baseline column: the floor)",
                f"{goipd:.0f} us",
                f"{floor:.0f} us",
                ratio(goipd, floor),
            )
        )
    return rows


def floor_row(floor: dict[str, Any], base_rps: float, unit: str) -> Row:
    """The durable floor beside the bare handler."""
    return Row(
        "durable floor: bare handler + group-committed SQLite write",
        rate(floor["rps"], unit),
        rate(base_rps, unit),
        ratio(floor["rps"], base_rps),
    )


def postgres_rows(
    postgres: dict[str, Any],
    sqlite: dict[str, Any],
    base_rps: float,
    base_p50: float,
    base_p99: float,
    unit: str,
    target: float,
    p99_target_ms: float,
) -> list[Row]:
    """goipd on the PostgreSQL ledger beside the bare handler and beside goipd on SQLite in
    the same run (`target`: the least ratio to SQLite the issue asks for)."""
    return [
        Row(
            "throughput, PostgreSQL ledger",
            rate(postgres["rps"], unit),
            rate(base_rps, unit),
            ratio(postgres["rps"], base_rps),
        ),
        Row(
            "throughput, PostgreSQL ledger, against SQLite (baseline column: goipd on SQLite)",
            rate(postgres["rps"], unit),
            rate(sqlite["rps"], unit),
            ratio(postgres["rps"], sqlite["rps"]),
            f">= {target:.2f}x SQLite",
            postgres["rps"] >= target * sqlite["rps"],
        ),
        Row(
            "latency p50 / p99, PostgreSQL ledger",
            f"{ms(postgres['p50_ms'])} / {ms(postgres['p99_ms'])}",
            f"{ms(base_p50)} / {ms(base_p99)}",
            target=f"p99 < {p99_target_ms:g} ms",
            met=postgres["p99_ms"] < p99_target_ms,
        ),
    ]


# --- HTTP helpers -------------------------------------------------------------------------------


async def get_text(port: int, path: str, timeout: float = 60.0) -> tuple[float, str]:
    """GET on a fresh connection: (seconds until the whole body is in, body)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        started = time.perf_counter()
        async with session.get(f"http://{HOST}:{port}{path}") as resp:
            body = await resp.text()
            resp.raise_for_status()
        return time.perf_counter() - started, body


_BUCKET = re.compile(r"^goipd_server_poll_duration_seconds_bucket\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def poll_buckets(metrics_text: str) -> dict[str, dict[float, float]]:
    """goipd_server_poll_duration_seconds buckets per server: {server: {le: count}}."""
    servers: dict[str, dict[float, float]] = {}
    for line in metrics_text.splitlines():
        match = _BUCKET.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group(1)))
            le = float(labels["le"])
            servers.setdefault(labels["server"], {})[le] = float(match.group(2))
    return servers


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding quantile q of a cumulative histogram."""
    if not buckets:
        return float("nan")
    total = buckets[max(buckets)]
    for le in sorted(buckets):
        if total and buckets[le] >= q * total:
            return le
    return float("inf")


# --- formatting ---------------------------------------------------------------------------------


def rate(value: float, unit: str = "req/s") -> str:
    return f"{value:,.0f} {unit}"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"
