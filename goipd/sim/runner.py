"""`goipd simulate`: run a simulated GoIP fleet until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
from pathlib import Path
from typing import Any

import yaml

from goipd.logs import configure_logging
from goipd.sim.goip import SimFleet, demo_spec, start_simulator, synthetic_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goipd simulate", description="Run a simulated GoIP SMS Server fleet."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=9090)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--spec", type=Path, help="fleet spec file (YAML or JSON)")
    source.add_argument("--demo", action="store_true", help="the 3-server demo fleet")
    source.add_argument("--servers", type=int, help="a synthetic fleet of N servers")
    parser.add_argument("--lines-per-server", type=int, default=32)
    parser.add_argument("--push-base", help="goipd base URL for push reports (demo fleet)")
    parser.add_argument(
        "--churn-interval",
        type=float,
        default=0.0,
        help="seconds between random line state changes (0 = off)",
    )
    parser.add_argument("--send-delay", type=float, help="override every server's send delay")
    parser.add_argument("--seed", type=int, default=7)
    return parser


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.spec is not None:
        text = args.spec.read_text(encoding="utf-8")
        loaded = json.loads(text) if args.spec.suffix == ".json" else yaml.safe_load(text)
        return loaded if isinstance(loaded, dict) else {}
    if args.servers is not None:
        return synthetic_spec(args.servers, args.lines_per_server)
    return demo_spec(args.push_base)


async def _run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.send_delay is not None:
        for server in spec.get("servers", []):
            server["send_delay"] = args.send_delay
    fleet = SimFleet.from_spec(spec, seed=args.seed)
    running = await start_simulator(fleet, args.host, args.port)
    print(
        f"simulator: {len(fleet.servers)} SMS Servers on http://{args.host}:{running.port}/"
        "<server>/goip/, control API at /_control/servers",
        flush=True,
    )
    churn = (
        asyncio.create_task(fleet.churn(args.churn_interval)) if args.churn_interval > 0 else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if churn is not None:
        churn.cancel()
    await running.stop()
    return 0


def main_simulate(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            raise ValueError
    except ValueError:
        print(f"goipd simulate: --host must be a loopback address, got {args.host!r}")
        return 2
    configure_logging("info", "auto")
    return asyncio.run(_run(args))
