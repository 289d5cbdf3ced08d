"""`goipd simulate`: run a simulated GoIP SMS Server fleet until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from goipd.runtime.logs import configure_logging, scrubber
from goipd.sim.common import until_stop_signal
from goipd.sim.goip import (
    DEFAULT_PROFILE,
    PROFILES,
    SimError,
    SimFleet,
    demo_spec,
    is_loopback,
    start_simulator,
    synthetic_spec,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goipd simulate",
        description="Run simulated GoIP SMS Servers on one loopback port "
        "(server NAME answers at http://HOST:PORT/NAME/goip/<api>/).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=9090, help="0 = any free port")
    parser.add_argument(
        "--device-port",
        type=int,
        default=0,
        help="where the simulated GoIP devices serve their status pages (0 = any free port)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--spec", type=Path, help="fleet spec file (.yaml/.yml or .json)")
    source.add_argument("--demo", action="store_true", help="the 3-server demo fleet (default)")
    source.add_argument("--servers", type=int, help="a synthetic fleet of N servers (s0001..)")
    parser.add_argument("--lines-per-server", type=int, default=32, help="with --servers")
    parser.add_argument("--push-base", help="goipd base URL the demo fleet pushes reports to")
    parser.add_argument(
        "--churn-interval",
        type=float,
        default=0.0,
        help="seconds between random line state changes (0 = off)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed for churn and the demo fleet")
    parser.add_argument("--send-delay", type=float, help="override every server's send delay")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=DEFAULT_PROFILE,
        help="how the servers answer: v1.28.4 = the real SMS Server v1.28.4 (its PHP, MySQL and "
        "engine), document = the vendor's API document (default: %(default)s); "
        "a server's own `profile` in the spec wins",
    )
    parser.add_argument(
        "--no-mbstring",
        action="store_true",
        help="v1.28.4 servers lack php-mbstring (every sendsms reply starts with a warning); "
        "a server's own `mbstring` in the spec wins",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.spec is not None:
        text = args.spec.read_text(encoding="utf-8")
        loaded = json.loads(text) if args.spec.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise SimError("the spec file must hold a mapping with a 'servers' list")
        return loaded
    if args.servers is not None:
        return synthetic_spec(args.servers, args.lines_per_server)
    return demo_spec(args.push_base, seed=args.seed)


async def _run(
    fleet: SimFleet, host: str, port: int, churn_interval: float, device_port: int = 0
) -> int:
    try:
        running = await start_simulator(fleet, host, port, device_port=device_port)
    except OSError as exc:
        print(f"goipd simulate: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    if churn_interval > 0:
        fleet.start_churn(churn_interval)
    print(
        f"simulator: {len(fleet.servers)} SMS Servers at {running.url}/<server>/goip/<api>/, "
        f"control API at {running.url}/_control/servers"
        + (
            f", {len(devices)} GoIP devices at {running.device_url('<device>')}/"
            if (devices := [d for s in fleet.servers.values() for d in s.devices])
            else ""
        ),
        flush=True,
    )
    try:
        await until_stop_signal()
    finally:
        await running.stop()
    return 0


def main_simulate(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # This process has a control API without auth: it must never be reachable off the host.
    if not is_loopback(args.host):
        print(
            f"goipd simulate: --host must be a loopback address, got {args.host!r}",
            file=sys.stderr,
        )
        return 2
    if args.push_base and (args.spec is not None or args.servers is not None):
        parser.error("--push-base applies to the demo fleet; put push URLs in the spec instead")
    if args.servers is not None and (args.servers < 1 or args.lines_per_server < 0):
        parser.error("--servers must be >= 1 and --lines-per-server >= 0")
    configure_logging(args.log_level, "auto")
    try:
        spec = _spec(args)
        for server in spec.get("servers") or []:
            if not isinstance(server, dict):
                continue  # from_spec says what is wrong with it
            if args.send_delay is not None:
                server["send_delay"] = args.send_delay
            server.setdefault("profile", args.profile)
            if args.no_mbstring:
                server.setdefault("mbstring", False)
        fleet = SimFleet.from_spec(spec, seed=args.seed)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"goipd simulate: {exc}", file=sys.stderr)
        return 2
    # Second line of defence: even a stray log line must not carry a server password.
    scrubber.set_secrets(server.password for server in fleet.servers.values())
    return asyncio.run(_run(fleet, args.host, args.port, args.churn_interval, args.device_port))


if __name__ == "__main__":
    sys.exit(main_simulate(sys.argv[1:]))
