"""6. Routing decision: Router.choose over 32,000 lines, in-process (bench/routebench.py)."""

from __future__ import annotations

import json

from bench.common import spawn
from bench.harness import Ctx, wait_exit
from bench.results import Row, ScenarioResult

TARGET_US = 50.0


def us(value: float) -> str:
    return f"{value:.2f} us" if value < 100 else f"{value:,.0f} us"


async def run(ctx: Ctx) -> ScenarioResult:
    p = ctx.params
    result = ScenarioResult(6, "Routing decision: Router.choose")
    lines = p.route_servers * p.route_lines
    result.params = {
        "fleet": f"LineRegistry of {p.route_servers:,} servers x {p.route_lines} lines "
        f"= {lines:,} lines built with apply_poll; no route rules (any line of any server)",
        "timing": f"median of 5 loops of {p.route_iterations:,} decisions, goipd's core",
        "routing": "line_rate_per_minute 600; the clock advances so no line hits its rate",
    }
    args = [
        "-m",
        "bench.routebench",
        "--servers",
        str(p.route_servers),
        "--lines",
        str(p.route_lines),
        "--iterations",
        str(p.route_iterations),
    ]
    proc = spawn("routebench", args, ctx.cores.server, ctx.workdir)
    code = await wait_exit(proc)
    out = [line for line in proc.log.read_text().splitlines() if line.startswith("{")]
    if code != 0 or not out:
        raise RuntimeError(f"routebench failed ({code}):\n{proc.tail()}")
    f = json.loads(out[-1])
    small = f"choose over {p.route_lines} lines"
    result.add(
        Row(
            f"choose, {f['lines']:,} lines",
            us(f["choose_us"]),
            us(f["small_choose_us"]),
            f"{f['choose_us'] / f['small_choose_us']:.2f}x",
            f"< {TARGET_US:g} us",
            f["choose_us"] < TARGET_US,
        )
    )
    result.add(
        Row(
            "choose + record_use",
            us(f["choose_record_us"]),
            us(f["small_choose_record_us"]),
            f"{f['choose_record_us'] / f['small_choose_record_us']:.2f}x",
            f"< {TARGET_US:g} us",
            f["choose_record_us"] < TARGET_US,
        )
    )
    result.add(Row("targets_for + choose + record_use (per recipient)", us(f["per_recipient_us"])))
    result.add(Row("choose + record_use, every other line logged out", us(f["half_logged_out_us"])))
    result.add(Row("dict lookup of a line (for scale)", us(f["dict_lookup_us"])))
    result.add(
        Row(
            "first choose of a new router (every line new to it)",
            us(f["first_choose_after_poll_us"]),
        )
    )
    result.add(
        Row(
            "first choose after one line appeared",
            us(f["choose_after_line_appeared_us"]),
        )
    )
    result.notes.append(
        f"Baseline: the same operation over one server of {p.route_lines} lines ({small}); "
        "the ratio shows how the cost grows with the fleet (LRU order: it should not)."
    )
    result.notes.append(
        "The first choice after the set of line ids changed brings the router's LRU orders "
        "up to date (Router._sync, on the event loop): only servers whose line ids changed are "
        "looked at, so a new router sorts every line once and one new line costs one server."
    )
    return result
