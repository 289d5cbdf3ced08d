"""3. Dispatch throughput: queued recipients drained to a simulated fleet, queued -> submitted."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    API_TOKEN,
    Proc,
    cpu_seconds,
    goipd_config,
    ledger_reader,
    sim_server_names,
    start_goipd,
)
from bench.harness import Ctx, loadgen, pct, rate, ratio
from bench.ledgers import BenchLedger
from bench.results import Row, ScenarioResult
from bench.s2_push import SUBMITTED, start_simulator, wait_states

TARGET = 2000.0
SLOW_SHARE_TARGET = 0.90
"""With one server's engine slow, the rest of the fleet keeps >= 90% of its healthy rate."""


@dataclass
class Drain:
    shape: str
    recipients: int
    messages: int
    due: float
    first: float
    last: float
    calls: int
    posting_overran: float
    cpu: float

    @property
    def rate(self) -> float:
        """Recipients per second from the moment they were due until the last was submitted."""
        return self.recipients / max(self.last - self.due, 1e-9)

    @property
    def per_call(self) -> float:
        return self.recipients / max(self.calls, 1)


async def drain(
    ctx: Ctx,
    goipd: Proc,
    ledger: BenchLedger,
    shape: str,
    per_message: int,
    base: int,
    done_before: int,
) -> Drain:
    n = ctx.params.dispatch_recipients
    messages = n // per_message
    # Everything is accepted with a send_at a little ahead, so the whole batch becomes due at
    # one instant: the drain is measured from then, not mixed with accepting.
    margin = (1.5 if ctx.params.quick else 3.0) + messages / 1000
    due = time.time() + margin
    spec = {
        "port": goipd.port,
        "connections": 32,
        "max_requests": messages,
        "source": {
            "kind": "messages",
            "base": base,
            "recipients": per_message,
            "tag": shape,
            "token": API_TOKEN,
            "send_at": dt.datetime.fromtimestamp(due, dt.UTC).isoformat(),
        },
    }
    posted = await loadgen(ctx, f"post-{shape}", spec)
    if posted["total_ok"] != messages:
        raise RuntimeError(f"{shape}: messages refused: {posted}")
    overran = max(time.time() - due, 0.0)
    await asyncio.sleep(max(due - time.time(), 0.0))
    cpu0, t0 = cpu_seconds(goipd.pid), time.monotonic()
    async with ctx.profiling(f"s3-dispatch-{shape}", goipd.pid):
        await wait_states(
            ledger,
            lambda c: sum(c.get(s, 0) for s in SUBMITTED) >= done_before + n,
            timeout=600,
            every=0.1,
        )
    cpu = (cpu_seconds(goipd.pid) - cpu0) / (time.monotonic() - t0)
    count, first, last, calls = await ledger.drain_figures(f"goipd bench {shape} #%")
    return Drain(shape, count, messages, due, first, last, calls, overran, cpu)


async def postgres_drain(ctx: Ctx, config: dict[str, Any], base: int) -> Drain:
    """The single-recipient drain with goipd's ledger on PostgreSQL (the HA setup's)."""
    ledger = BenchLedger.postgres(ctx.workdir, "dispatch-pg")
    try:
        goipd = await start_goipd(ledger.configure(dict(config)), ctx.cores.server, ctx.workdir)
        try:
            return await drain(ctx, goipd, ledger, "single-pg", 1, base, 0)
        finally:
            await goipd.stop()
    finally:
        await ledger.drop()


def sendsms_requests(ctx: Ctx, calls: int, per_call: int, base: int) -> list[dict[str, Any]]:
    """The same sendsms calls goipd made (count and size), straight to the simulator: one per
    line in turn, as the least-recently-used choice spreads them."""
    p = ctx.params
    names = sim_server_names(p.dispatch_servers)
    requests = []
    for call in range(calls):
        server = names[call % len(names)]
        line = f"G{100 + (call // len(names)) % p.dispatch_lines}"
        first = base + call * per_call
        numbers = [f"+8869{(first + k) % 100_000_000:08d}" for k in range(per_call)]
        requests.append(
            {
                "path": f"/{server}/goip/sendsms/",
                "body": {
                    "auth": {"username": "root", "password": f"pw-{server}"},
                    "number": ",".join(numbers),
                    "content": f"direct #{call}",
                    "goip_line": line,
                },
            }
        )
    return requests


async def direct(ctx: Ctx, sim: Proc, drained: Drain, base: int) -> float:
    """Baseline: recipients/s a bare client on goipd's core pushes into the same simulator."""
    per_call = max(round(drained.per_call), 1)
    calls = max(drained.recipients // per_call, 1)
    path = ctx.workdir / f"direct-{drained.shape}.json"
    path.write_text(json.dumps(sendsms_requests(ctx, calls, per_call, base)))
    spec = {"port": sim.port, "connections": 64, "source": {"kind": "file", "path": str(path)}}
    stats = await loadgen(ctx, f"direct-{drained.shape}", spec, ctx.cores.server)
    if stats["total_ok"] != calls:
        raise RuntimeError(f"direct sendsms failed: {stats}")
    return float(stats["rps"] * per_call)


@dataclass
class FleetRate:
    label: str
    rate: float
    """Recipients/s submitted through the servers other than the slow one's place (s0001)."""
    elsewhere: int
    on_first: int
    first_last: float


async def slow_server_drain(ctx: Ctx, slow: bool, delay: float, base: int) -> FleetRate:
    """One goipd and one v1.28.4 simulator of dispatch_servers + 1 servers; with `slow`, the
    first server's engine takes `delay` to answer every sendsms."""
    p = ctx.params
    servers = p.dispatch_servers + 1
    extra = ["--profile", "v1.28.4"]
    if slow:
        extra += ["--slow", "1", "--engine-delay", str(delay)]
    label = "one slow" if slow else "all healthy"
    slug = "slow" if slow else "healthy"
    sim = await start_simulator(ctx, servers, p.dispatch_lines, extra)
    db = ctx.workdir / f"dispatch-{slug}.db"
    config = goipd_config(
        db,
        sim_port=sim.port,
        servers=servers,
        poll_interval="1s" if p.quick else "10s",
        timeout="500ms" if p.quick else "5s",
        routing={"line_rate_per_minute": 600},
    )
    config["reconcile"] = {"interval": "1m", "query_after": "1h", "report_deadline": "2h"}
    try:
        goipd = await start_goipd(config, ctx.cores.server, ctx.workdir)
        try:
            drained = await drain(ctx, goipd, BenchLedger(db), f"fleet-{slug}", 1, base, 0)
        finally:
            await goipd.stop()
    finally:
        await sim.stop()
    first = sim_server_names(1)[0]
    with ledger_reader(db) as conn:
        elsewhere, last, on_first, first_last = conn.execute(
            "SELECT SUM(r.server != ?), MAX(CASE WHEN r.server != ? THEN r.submitted_at END), "
            "SUM(r.server = ?), MAX(CASE WHEN r.server = ? THEN r.submitted_at END) "
            "FROM recipients r",
            (first, first, first, first),
        ).fetchone()
    return FleetRate(
        label,
        elsewhere / max(last - drained.due, 1e-9),
        elsewhere,
        on_first or 0,
        (first_last - drained.due) if first_last else 0.0,
    )


async def slow_server_rows(ctx: Ctx, result: ScenarioResult) -> None:
    delay = 1.0 if ctx.params.quick else 15.0
    healthy = await slow_server_drain(ctx, False, delay, 80_000_000)
    slow = await slow_server_drain(ctx, True, delay, 81_000_000)
    share = slow.rate / max(healthy.rate, 1e-9)
    servers = ctx.params.dispatch_servers + 1
    result.add(
        Row(
            f"single, {servers} v1.28.4 servers, s0001's engine {delay:g}s slow: recipients/s "
            "through the other servers",
            rate(slow.rate, "recipients/s"),
            rate(healthy.rate, "recipients/s (all healthy)"),
            f"{share:.2f}x",
            f">= {SLOW_SHARE_TARGET:.2f}x",
            share >= SLOW_SHARE_TARGET,
        )
    )
    result.add(
        Row(
            "single, slow s0001: recipients it took / its last submitted after due",
            f"{slow.on_first:,} / {slow.first_last:.1f}s",
            f"{healthy.on_first:,} / {healthy.first_last:.1f}s (healthy)",
        )
    )
    result.notes.append(
        "Slow-server rows: the same drain of 1-recipient messages twice, against a simulator "
        "whose servers all answer like v1.28.4, first with every engine healthy, then with "
        f"s0001's engine answering sendsms after {delay:g}s. The rate counts the recipients "
        "submitted through the other servers, from due to the last of them; goipd keeps at "
        "most servers[].max_sends_in_flight (4) sendsms calls open per server."
    )


async def run(ctx: Ctx) -> ScenarioResult:
    p = ctx.params
    result = ScenarioResult(3, "Dispatch throughput: queued -> submitted")
    lines = p.dispatch_servers * p.dispatch_lines
    result.params = {
        "recipients": f"{p.dispatch_recipients:,} per shape",
        "fleet": f"{p.dispatch_servers} simulated SMS Servers x {p.dispatch_lines} lines "
        f"= {lines:,} lines, send delay 0, push disabled",
        "routing": "line_rate_per_minute 600 (the maximum)",
        "cores": ctx.cores.describe(),
    }
    sim = await start_simulator(ctx, p.dispatch_servers, p.dispatch_lines)
    db = ctx.workdir / "dispatch.db"
    config = goipd_config(
        db,
        sim_port=sim.port,
        servers=p.dispatch_servers,
        poll_interval="1s" if p.quick else "10s",
        timeout="500ms" if p.quick else "5s",
        routing={"line_rate_per_minute": 600},
    )
    config["reconcile"] = {"interval": "1m", "query_after": "1h", "report_deadline": "2h"}
    shapes = [
        ("bulk", p.dispatch_bulk_size, f"{p.dispatch_bulk_size}-recipient messages"),
        ("single", 1, "1-recipient messages"),
    ]
    drains: list[tuple[Drain, float, str]] = []
    try:
        goipd = await start_goipd(config, ctx.cores.server, ctx.workdir)
        try:
            for index, (shape, size, label) in enumerate(shapes):
                drained = await drain(
                    ctx,
                    goipd,
                    BenchLedger(db),
                    shape,
                    size,
                    60_000_000 + index * 1_000_000,
                    index * p.dispatch_recipients,
                )
                drains.append((drained, 0.0, label))
        finally:
            await goipd.stop()
        for index, (drained, _, label) in enumerate(drains):
            baseline = await direct(ctx, sim, drained, 70_000_000 + index * 1_000_000)
            drains[index] = (drained, baseline, label)
        pg_drain = await postgres_drain(ctx, config, 62_000_000)
    finally:
        await sim.stop()

    for drained, baseline, label in drains:
        result.add(
            Row(
                f"{drained.shape}: {drained.messages:,} x {label}",
                rate(drained.rate, "recipients/s"),
                rate(baseline, "recipients/s"),
                ratio(drained.rate, baseline),
                f">= {TARGET:,.0f}/s",
                drained.rate >= TARGET,
            )
        )
        result.add(
            Row(
                f"{drained.shape}: sendsms calls (recipients per call)",
                f"{drained.calls:,} ({drained.per_call:.1f})",
            )
        )
        result.add(
            Row(
                f"{drained.shape}: due -> first / last submitted",
                f"{drained.first - drained.due:.2f}s / {drained.last - drained.due:.2f}s",
            )
        )
        result.add(Row(f"{drained.shape}: goipd CPU while draining", pct(drained.cpu)))
        if drained.posting_overran:
            result.notes.append(
                f"{drained.shape}: accepting the messages took {drained.posting_overran:.1f}s "
                "longer than planned, so some were dispatched while others were still posted."
            )
    single_baseline = next(b for d, b, _ in drains if d.shape == "single")
    result.add(
        Row(
            f"single, PostgreSQL ledger: {pg_drain.messages:,} x 1-recipient messages",
            rate(pg_drain.rate, "recipients/s"),
            rate(single_baseline, "recipients/s"),
            ratio(pg_drain.rate, single_baseline),
            f">= {TARGET:,.0f}/s",
            pg_drain.rate >= TARGET,
        )
    )
    result.add(Row("single, PostgreSQL ledger: goipd CPU while draining", pct(pg_drain.cpu)))
    result.notes.append(
        "PostgreSQL row: the single-recipient drain again with a goipd whose storage.url is the "
        "PostgreSQL of scenario 1 (a schema of its own, dropped afterwards), against the same "
        "simulator; the baseline is the single drain's bare client."
    )
    await slow_server_rows(ctx, result)
    result.notes.append(
        "Recipients are accepted with a common send_at a few seconds ahead, then drained from "
        "the moment they are due; the rate is recipients / (last submitted_at - send_at) read "
        "from the ledger, so it includes the dispatcher's idle wake-up (up to 1 s)."
    )
    result.notes.append(
        "Baseline: a bare HTTP client on goipd's core making the same number of sendsms calls "
        "of the same size straight to the simulator (64 connections, goipd's dispatch "
        "concurrency): what the simulator and loopback allow without a ledger or routing."
    )
    return result
