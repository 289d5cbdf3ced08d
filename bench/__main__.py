"""`python -m bench [--scenario N ...] [--quick] [--poll-duration S] [--results PATH]`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from bench.common import cores, raise_fd_limit
from bench.harness import FULL, QUICK, Ctx
from bench.results import DEFAULT_RESULTS, ScenarioResult, update_results

SCENARIOS = {
    1: "s1_accept",
    2: "s2_push",
    3: "s3_dispatch",
    4: "s4_polling",
    5: "s5_scrape",
    6: "s6_routing",
}


def scenario(number: int) -> Callable[[Ctx], Awaitable[ScenarioResult]]:
    run: Callable[[Ctx], Awaitable[ScenarioResult]] = importlib.import_module(
        f"bench.{SCENARIOS[number]}"
    ).run
    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenario",
        "-s",
        type=int,
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all six",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a few seconds per scenario"
    )
    parser.add_argument(
        "--poll-duration",
        type=float,
        help="seconds scenario 4 measures polling for (default 120, --quick 5)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help=f"markdown file to update (default {DEFAULT_RESULTS}; with --quick, none)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, ledgers)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy goipd during each measured phase, profiles into DIR (perturbs figures)",
    )
    return parser


async def _run(args: argparse.Namespace) -> int:
    params = QUICK if args.quick else FULL
    if args.poll_duration is not None:
        params = replace(params, poll_duration=args.poll_duration)
    raise_fd_limit()
    layout = cores()
    if layout.pinned:
        # The harness itself (scrapes, ledger reads) stays off goipd's core too.
        os.sched_setaffinity(0, layout.clients)
    # Tiny --quick figures never replace the real ones unless a file is named.
    results: Path | None = args.results or (None if args.quick else DEFAULT_RESULTS)
    failures = 0
    collected: dict[str, dict[str, str]] = {}
    for number in sorted(set(args.scenario or SCENARIOS)):
        workdir = Path(tempfile.mkdtemp(prefix=f"goipd-bench-{number}-"))
        ctx = Ctx(params, layout, workdir, args.profile)
        started = time.monotonic()
        try:
            result = await scenario(number)(ctx)
        except Exception:
            failures += 1
            traceback.print_exc()
            print(f"scenario {number} failed; logs in {workdir}", file=sys.stderr)
            continue
        result.seconds = time.monotonic() - started
        result.quick = params.quick
        print(result.console(), flush=True)
        if results is not None:
            update_results(results, result)
        collected[str(number)] = result.figures()
        if args.keep:
            print(f"  (work directory {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(collected, indent=2, ensure_ascii=False))
    if results is not None:
        print(f"results: {results}")
    else:
        print(f"--quick: {DEFAULT_RESULTS.name} left alone (--results PATH writes the figures)")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
