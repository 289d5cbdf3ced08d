"""1. Durable accept: POST /api/v1/messages at saturation, SQLite with fsync, vs a bare handler."""

from __future__ import annotations

import datetime as dt
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.common import API_TOKEN, cpu_seconds, cpu_split, goipd_config, start_goipd
from bench.harness import (
    Ctx,
    baseline_run,
    cpu_per_request_rows,
    floor_row,
    loadgen,
    ms,
    pct,
    postgres_rows,
    rate,
    ratio,
)
from bench.ledgers import BenchLedger, pg_settings
from bench.results import Row, ScenarioResult

FLOOR_TARGET = 0.6
"""Issue #21: accept at >= 0.60x of the durable floor."""
POSTGRES_TARGET = 0.6
"""Issue #21: accept on PostgreSQL at >= 0.6x of goipd on SQLite, p99 < 25 ms."""
POSTGRES_P99_MS = 25.0
TARGET_P99_MS = 25.0
AHEAD = 3600.0
"""How far ahead accept-alone messages are scheduled: the dispatcher has nothing due while
they are posted, as the floor has no dispatcher."""


def accept_spec(
    ctx: Ctx, port: int, base: int, tag: str, scheduled: bool = False
) -> dict[str, Any]:
    p = ctx.params
    source: dict[str, Any] = {"kind": "messages", "base": base, "tag": tag, "token": API_TOKEN}
    if scheduled:
        source["send_at"] = _ahead()
    return {
        "port": port,
        "connections": p.accept_connections,
        "warmup": p.accept_warmup,
        "duration": p.accept_duration,
        "max_requests": p.accept_requests,
        "source": source,
    }


def bulk_spec(ctx: Ctx, port: int, base: int, tag: str, scheduled: bool = False) -> dict[str, Any]:
    """Messages of accept_bulk_size recipients each: what a newsletter or an OTP batch posts."""
    p = ctx.params
    spec = accept_spec(ctx, port, base, tag, scheduled)
    spec["source"]["recipients"] = p.accept_bulk_size
    spec.update(
        connections=p.accept_bulk_connections,
        warmup=1.0 if not p.quick else 0.0,
        duration=p.accept_bulk_duration,
        max_requests=p.accept_bulk_requests,
        # 150,000 prebuilt bodies of 1,000 numbers took a minute per phase; a few thousand
        # is more than either side posts in the window (the rest would be built as it runs).
        prebuild=4_000,
    )
    return spec


def _ahead() -> str:
    return dt.datetime.fromtimestamp(time.time() + AHEAD, dt.UTC).isoformat()


async def measure_goipd(
    ctx: Ctx,
    name: str,
    base: int,
    ledger: BenchLedger,
    spec_for: Callable[..., dict[str, Any]] = accept_spec,
    scheduled: bool = True,
) -> tuple[dict[str, Any], float, int]:
    """Load figures, goipd's CPU share and the recipients in its ledger afterwards.
    `scheduled`: messages are posted for an hour ahead (accept alone); else for now, and the
    dispatcher parks each (no SMS Server is configured: no route)."""
    # routing.retry_delay 1h: a parked recipient is looked at once, so the dispatcher's work
    # is one read and one rewrite per recipient, not a loop over a growing queue.
    config = ledger.configure(goipd_config(ledger.db, routing={"retry_delay": "1h"}))
    try:
        goipd = await start_goipd(config, ctx.cores.server, ctx.workdir)
        try:
            cpu0, t0 = cpu_seconds(goipd.pid), time.monotonic()
            split = cpu_split(goipd.pid)
            async with ctx.profiling(f"s1-{name}", goipd.pid):
                spec = spec_for(ctx, goipd.port, base, name, scheduled)
                stats = await loadgen(ctx, f"load-{name}", spec)
            cpu = (cpu_seconds(goipd.pid) - cpu0) / (time.monotonic() - t0)
            stats["loop_us"], stats["threads_us"] = cpu_split(goipd.pid).per_request_us(
                split, stats["total"]
            )
        finally:
            await goipd.stop()
        stored = sum((await ledger.state_counts()).values())
    finally:
        await ledger.drop()
    return stats, cpu, stored


async def run(ctx: Ctx) -> ScenarioResult:
    p = ctx.params
    result = ScenarioResult(1, "Durable accept: POST /api/v1/messages")
    load = (
        f"{p.accept_requests} requests"
        if p.accept_requests
        else f"{p.accept_warmup:g}s warm-up + {p.accept_duration:g}s measured"
    )
    result.params = {
        "connections": str(p.accept_connections),
        "load": f"closed loop, {load}, 1 recipient per message, distinct numbers and texts",
        "ledger": "SQLite WAL, synchronous=FULL (fsync per group commit) on ext4; and "
        + await pg_settings(),
        "cores": ctx.cores.describe(),
    }

    def plain(base: int, tag: str) -> Callable[[int], dict[str, Any]]:
        return lambda port: accept_spec(ctx, port, base, tag)

    def sqlite(name: str) -> BenchLedger:
        return BenchLedger.sqlite(ctx.workdir, name)

    def postgres(name: str) -> BenchLedger:
        return BenchLedger.postgres(ctx.workdir, name)

    def paired(ctx: Ctx, port: int, base: int, tag: str, scheduled: bool = False) -> dict[str, Any]:
        spec = accept_spec(ctx, port, base, tag, scheduled)
        if not p.quick:
            spec.update(warmup=p.accept_pair_warmup, duration=p.accept_pair_duration)
        return spec

    before = await baseline_run(ctx, "baseline-1a", plain(0, "base-a"))
    # The floor and goipd accepting alone in back-to-back pairs, the target judged on the
    # median pair: the machine's speed drifts over tens of seconds (one goipd run against one
    # floor run gave 0.62x, 0.54x and 0.42x for the same code within an hour), a pair's ratio
    # much less. The flood guard stays on (default 10m window) and is consulted for every
    # recipient, as in production; numbers and texts are distinct so it never refuses.
    pairs: list[tuple[dict[str, Any], dict[str, Any], float, int]] = []
    for index in range(p.accept_pairs):
        floor_i = await baseline_run(
            ctx,
            f"floor-1-{index}",
            functools.partial(
                paired, ctx, base=30_000_000 + index * 1_000_000, tag=f"floor-{index}"
            ),
            durable=True,
        )
        alone_i, cpu_i, stored_i = await measure_goipd(
            ctx, f"goipd-{index}", 10_000_000 + index * 1_000_000, sqlite(f"goipd-{index}"), paired
        )
        pairs.append((floor_i, alone_i, cpu_i, stored_i))
    parking, park_cpu, park_stored = await measure_goipd(
        ctx, "goipd-park", 15_000_000, sqlite("goipd-park"), scheduled=False
    )
    after = await baseline_run(ctx, "baseline-1b", plain(20_000_000, "base-b"))
    pg, pg_cpu, pg_stored = await measure_goipd(ctx, "goipd-pg", 40_000_000, postgres("pg"))
    pg_park, _, pg_park_stored = await measure_goipd(
        ctx, "goipd-pg-park", 45_000_000, postgres("pg-park"), scheduled=False
    )
    # Bulk: the same goipd and floor, with messages of accept_bulk_size recipients.
    bulk, _, bulk_stored = await measure_goipd(
        ctx, "goipd-bulk", 50_000_000, sqlite("goipd-bulk"), bulk_spec
    )
    bulk_floor = await baseline_run(
        ctx,
        "floor-1-bulk",
        lambda port: bulk_spec(ctx, port, 60_000_000, "floor-bulk"),
        durable=True,
    )

    base_rps = (before["rps"] + after["rps"]) / 2
    base_p50 = (before["p50_ms"] + after["p50_ms"]) / 2
    base_p99 = (before["p99_ms"] + after["p99_ms"]) / 2
    floors = [pair[0] for pair in pairs]
    runs = [pair[1] for pair in pairs]
    floor = {
        "rps": statistics.mean(f["rps"] for f in floors),
        "p99_ms": statistics.mean(f["p99_ms"] for f in floors),
    }
    alone = merged(runs)
    cpu = statistics.mean(pair[2] for pair in pairs)
    stored = sum(pair[3] for pair in pairs)
    pair_ratios = [a["rps"] / f["rps"] for f, a in zip(floors, runs, strict=True)]
    median_ratio = statistics.median(pair_ratios)
    result.add(Row("throughput", rate(alone["rps"]), rate(base_rps), ratio(alone["rps"], base_rps)))
    result.add(
        Row("latency p50", ms(alone["p50_ms"]), ms(base_p50), ratio(alone["p50_ms"], base_p50))
    )
    result.add(
        Row(
            "latency p99",
            ms(alone["p99_ms"]),
            ms(base_p99),
            ratio(alone["p99_ms"], base_p99),
            f"< {TARGET_P99_MS:g} ms",
            alone["p99_ms"] < TARGET_P99_MS,
        )
    )
    result.add(Row("latency max", ms(alone["max_ms"]), ms(max(before["max_ms"], after["max_ms"]))))
    result.add(_stored_row("answered 202 / stored in ledger", alone, stored))
    result.add(floor_row(floor, base_rps, "req/s"))
    result.add(
        Row(
            f"throughput against the durable floor, median of {len(pairs)} back-to-back pairs "
            "(baseline column: the floor)",
            rate(alone["rps"]),
            rate(floor["rps"]),
            f"{median_ratio:.2f}x",
            f">= {FLOOR_TARGET:.2f}x the floor",
            median_ratio >= FLOOR_TARGET,
        )
    )
    result.add(
        Row(
            "latency p99 of the durable floor",
            ms(floor["p99_ms"]),
            ms(base_p99),
            ratio(floor["p99_ms"], base_p99),
        )
    )
    result.add(
        Row(
            "with the dispatcher parking each recipient (no route): throughput against the "
            "durable floor / latency p99",
            f"{rate(parking['rps'])} / {ms(parking['p99_ms'])}",
            rate(floor["rps"]),
            ratio(parking["rps"], floor["rps"]),
        )
    )
    result.add(
        _stored_row("with the dispatcher parking: answered 202 / stored", parking, park_stored)
    )
    for row in postgres_rows(
        pg, alone, base_rps, base_p50, base_p99, "req/s", POSTGRES_TARGET, POSTGRES_P99_MS
    ):
        result.add(row)
    result.add(_stored_row("answered 202 / stored, PostgreSQL ledger", pg, pg_stored))
    result.add(
        Row(
            "PostgreSQL with the dispatcher parking each recipient: throughput against SQLite "
            "parking / latency p99",
            f"{rate(pg_park['rps'])} / {ms(pg_park['p99_ms'])}",
            rate(parking["rps"]),
            ratio(pg_park["rps"], parking["rps"]),
        )
    )
    result.add(_stored_row("PostgreSQL, parking: answered 202 / stored", pg_park, pg_park_stored))
    size = p.accept_bulk_size
    result.add(
        Row(
            f"bulk: {size:,}-recipient messages, recipients/s (baseline column: the floor "
            "writing a row per recipient)",
            rate(bulk["rps"] * size, "recipients/s"),
            rate(bulk_floor["rps"] * size, "recipients/s"),
            ratio(bulk["rps"], bulk_floor["rps"]),
        )
    )
    result.add(
        Row(
            "bulk: latency p50 / p99",
            f"{ms(bulk['p50_ms'])} / {ms(bulk['p99_ms'])}",
            f"{ms(bulk_floor['p50_ms'])} / {ms(bulk_floor['p99_ms'])}",
        )
    )
    result.add(_stored_row("bulk: answered 202 / recipients stored", bulk, bulk_stored, size))
    result.add(Row("goipd CPU (share of its one core)", pct(cpu)))
    for row in cpu_per_request_rows(runs, floors, "request, accept alone"):
        result.add(row)
    result.add(Row("goipd CPU, dispatcher parking", pct(park_cpu)))
    result.add(Row("goipd CPU, PostgreSQL ledger", pct(pg_cpu)))
    result.add(
        Row(
            "load generator CPU (its core)",
            pct(alone["cpu"]),
            pct((before["cpu"] + after["cpu"]) / 2),
        )
    )
    result.notes.append(
        f"Baseline (bench/baseline.py, bare aiohttp handler that parses the JSON and answers "
        f"202) before / after goipd: {rate(before['rps'])} / {rate(after['rps'])}."
    )
    result.notes.append(
        "Accept alone (the rows without 'parking'): every message has a send_at an hour "
        "ahead, so while it is measured the dispatcher has nothing due, as the floor has no "
        "dispatcher; validation (send_at included), flood guard and rows are those of any "
        "message. goipd runs with no SMS Server configured and an API token configured and "
        "sent."
    )
    result.notes.append(
        "Parking rows: the same goipd posted messages for now; with no SMS Server there is no "
        "route, so the dispatcher reads each accepted recipient and rewrites it once as queued "
        "with no_route (routing.retry_delay 1h): a second write per recipient that the floor "
        "does not make, shown for what a goipd without a usable route pays."
    )
    result.notes.append(
        "Durable floor (bench/baseline.py --store): the bare handler that also writes each "
        "recipient as one SQLite row (id, number, text) through a group-committing writer thread "
        "with the ledger's settings (WAL, synchronous=FULL) before answering; no validation, "
        "flood guard or dispatch. Its ratio is the most any handler that stores what it "
        "acknowledges can reach on this stack."
    )
    result.notes.append(
        f"Pairs (floor, then goipd accepting alone, {p.accept_pair_warmup:g}s warm-up + "
        f"{p.accept_pair_duration:g}s measured each): "
        + "; ".join(
            f"{rate(f['rps'])} / {rate(a['rps'])} = {a['rps'] / f['rps']:.2f}x"
            for f, a in zip(floors, runs, strict=True)
        )
        + ". The accept-alone rows show their mean (latency p99 and max: the worst pair)."
    )
    result.notes.append(
        "PostgreSQL ledger: the same goipd and loads with storage.url on the PostgreSQL above "
        "(a schema of its own, dropped afterwards); goipd is pinned as before, the database's "
        "processes run on either core, so this run also competes with its database for CPU."
    )
    result.notes.append(
        f"Bulk rows: the same goipd (accept alone) with {p.accept_bulk_connections} "
        f"connections posting messages of {size:,} recipients each (distinct numbers), against "
        "the durable floor posting the same messages and writing one row per recipient in the "
        "same group commit; the ratio is goipd's messages/s over the floor's."
    )
    for stats in (*runs, parking, pg, pg_park, bulk):
        for sample in stats["error_samples"]:
            result.notes.append(f"goipd error sample: {sample}")
    return result


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Load figures of several runs as one: rates and CPU the mean, p50 the median, p99 and
    max the worst, counts the sum."""
    return {
        "rps": statistics.mean(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "max_ms": max(r["max_ms"] for r in runs),
        "total": sum(r["total"] for r in runs),
        "total_ok": sum(r["total_ok"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "cpu": statistics.mean(r["cpu"] for r in runs),
        "error_samples": [],
    }


def _stored_row(label: str, stats: dict[str, Any], stored: int, per_message: int = 1) -> Row:
    answered = stats["total_ok"] == stats["total"] and not stats["errors"]
    return Row(
        label,
        f"{stats['total_ok']}/{stats['total']} / {stored:,}",
        target="all, and every 202 stored",
        met=answered and stored == stats["total_ok"] * per_message,
    )
