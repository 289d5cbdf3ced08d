"""`python -m goipd.sim.cloud_runner`: the smsgo, PaaSoo and c123 simulators in one process, for
`make demo` (tests start them in-process instead). Loopback only; runs until SIGINT/SIGTERM.

Accounts are the simulators' defaults (see goipd/sim/demo.py for the matching goipd config).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from goipd.runtime.logs import configure_logging
from goipd.sim.c123 import start_c123_sim
from goipd.sim.common import until_stop_signal
from goipd.sim.goip import is_loopback
from goipd.sim.paasoo import start_paasoo_sim
from goipd.sim.smsgo import start_smsgo_sim


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the cloud SMS provider simulators.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--smsgo-port", type=int, default=9091, help="smsgo primary")
    parser.add_argument("--smsgo-backup-port", type=int, default=9092, help="smsgo backup")
    parser.add_argument("--paasoo-port", type=int, default=9093)
    parser.add_argument("--c123-port", type=int, default=9094)
    parser.add_argument("--paasoo-dlr-url", help="goipd's PaaSoo DLR hook (the console setting)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


async def _run(args: argparse.Namespace) -> int:
    smsgo = await start_smsgo_sim(
        args.host, args.smsgo_port, backup_port=args.smsgo_backup_port, dlr_delay=2.0
    )
    paasoo = await start_paasoo_sim(
        args.host, args.paasoo_port, client_url=args.paasoo_dlr_url, dlr_delay=2.0
    )
    c123 = await start_c123_sim(args.host, args.c123_port)
    print(
        f"cloud simulators: smsgo {smsgo.url} (backup {smsgo.backup_url}, control "
        f"{smsgo.control_url}), PaaSoo {paasoo.url}, c123 {c123.url}",
        flush=True,
    )
    try:
        await until_stop_signal()
    finally:
        for running in (smsgo, paasoo, c123):
            await running.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not is_loopback(args.host):
        print(f"cloud simulators listen on loopback only, not {args.host!r}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, "auto")
    try:
        return asyncio.run(_run(args))
    except OSError as exc:
        print(f"cloud simulators: cannot listen: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
