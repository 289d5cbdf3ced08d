"""5. Scrape cost: /metrics with 32,000 lines, and what a scrape does to requests meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from bench.common import API_TOKEN, goipd_config, percentile, start_goipd
from bench.harness import Ctx, get_text, loadgen, ms
from bench.results import Row, ScenarioResult
from bench.s2_push import start_simulator

TARGET_P99_MS = 300.0
TARGET_STALL_MS = 50.0


def paced_spec(ctx: Ctx, port: int, base: int, tag: str) -> dict[str, Any]:
    p = ctx.params
    return {
        "port": port,
        "connections": 32,
        "rate": p.stall_rate,
        "warmup": 1.0,
        "duration": p.stall_duration,
        "grace": 5.0,
        "source": {"kind": "messages", "base": base, "tag": tag, "token": API_TOKEN},
    }


def _answered(stats: dict[str, Any]) -> str:
    due = stats["requests"] + stats["unsent"]
    return f"{due} / {stats['requests']} / {stats['unsent']}"


async def scrape_loop(port: int, durations: list[float]) -> None:
    while True:
        seconds, _ = await get_text(port, "/metrics")
        durations.append(seconds)


async def gzipped_size(port: int) -> int:
    """Bytes of one scrape as Prometheus gets it (it asks for gzip)."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}
        ) as resp,
    ):
        return len(await resp.read())


async def run(ctx: Ctx) -> ScenarioResult:
    p = ctx.params
    result = ScenarioResult(5, "Scrape cost: GET /metrics")
    result.params = {
        "fleet": f"{p.scrape_servers:,} simulated SMS Servers x {p.scrape_lines} lines "
        f"= {p.scrape_servers * p.scrape_lines:,} lines, polled every "
        f"{'1s' if p.quick else '10s'}",
        "scrapes": f"{p.scrapes} back to back, each on a new connection, asking for gzip as "
        "Prometheus does (time until the decoded body is in)",
        "accept load": f"{p.stall_rate:g} POST /api/v1/messages per second (fixed rate, "
        f"latency from each request's due time), {p.stall_duration:g}s without and with a "
        "scrape loop",
        "cores": ctx.cores.describe(),
    }
    interval = "1s" if p.quick else "10s"
    sim = await start_simulator(ctx, p.scrape_servers, p.scrape_lines)
    config = goipd_config(
        ctx.workdir / "scrape.db",
        sim_port=sim.port,
        servers=p.scrape_servers,
        poll_interval=interval,
        timeout="500ms" if p.quick else "5s",
        routing={"line_rate_per_minute": 600},
    )
    try:
        goipd = await start_goipd(config, ctx.cores.server, ctx.workdir, timeout=300)
        try:
            await asyncio.sleep(1.0 if p.quick else 10.0)
            durations: list[float] = []
            body = ""
            async with ctx.profiling("s5-scrape", goipd.pid):
                for _ in range(p.scrapes):
                    seconds, body = await get_text(goipd.port, "/metrics")
                    durations.append(seconds)
            series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
            wire = await gzipped_size(goipd.port)
            quiet = await loadgen(ctx, "paced-quiet", paced_spec(ctx, goipd.port, 0, "quiet"))
            during: list[float] = []
            scraper = asyncio.create_task(scrape_loop(goipd.port, during))
            try:
                busy = await loadgen(
                    ctx, "paced-scraped", paced_spec(ctx, goipd.port, 10_000_000, "scraped")
                )
            finally:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
        finally:
            await goipd.stop()
    finally:
        await sim.stop()

    p50 = percentile(durations, 50) * 1000
    p99 = percentile(durations, 99) * 1000
    result.add(Row("first scrape after start-up", ms(durations[0] * 1000)))
    result.add(Row("scrape time p50", ms(p50)))
    result.add(
        Row(
            f"scrape time p99 (of {len(durations)})",
            ms(p99),
            target=f"< {TARGET_P99_MS:g} ms",
            met=p99 < TARGET_P99_MS,
        )
    )
    result.add(
        Row(
            "scrape size",
            f"{len(body.encode()) / 1e6:.1f} MB, {series:,} series; {wire / 1e6:.1f} MB gzipped",
        )
    )
    added = busy["p99_ms"] - quiet["p99_ms"]
    result.add(
        Row(
            "accept latency p50 while scraping",
            ms(busy["p50_ms"]),
            ms(quiet["p50_ms"]),
        )
    )
    result.add(
        Row(
            "accept latency p99 while scraping",
            ("at least " if busy["unsent"] else "") + ms(busy["p99_ms"]),
            ms(quiet["p99_ms"]),
            target=f"at most +{TARGET_STALL_MS:g} ms",
            met=added <= TARGET_STALL_MS,
        )
    )
    result.add(Row("accept latency max while scraping", ms(busy["max_ms"]), ms(quiet["max_ms"])))
    result.add(
        Row(
            "accept requests due / answered / never sent",
            _answered(busy),
            _answered(quiet),
        )
    )
    result.add(Row("scrapes during the scraped phase", str(len(during))))
    if busy["unsent"]:
        result.notes.append(
            "Requests still unsent 5 s after the window count with the latency they had "
            "reached then, so the latency figures while scraping are lower bounds."
        )
    result.notes.append(
        "Baseline for the accept latency: the same paced load on the same goipd without "
        "scraping, right before. Accepted messages are dispatched to the simulator meanwhile, "
        "as in production."
    )
    return result
