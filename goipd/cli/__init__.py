"""`goipd run|check-config|send|lines|messages show|quarantine|release|simulate|version`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from goipd import __version__
from goipd.cli import client as client_cli
from goipd.config import ConfigError, load_settings
from goipd.runtime.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        # The simulator has its own option set; hand it everything after the verb.
        from goipd.sim.runner import main_simulate

        return main_simulate(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.version or args.command == "version":
        print(f"goipd {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "run":
        return _run(args.config)
    if args.command == "send":
        return client_cli.run_send(args)
    if args.command == "lines":
        return client_cli.run_lines(args)
    if args.command == "messages":
        return client_cli.run_show(args)
    if args.command == "quarantine":
        return client_cli.run_quarantine(args)
    if args.command == "release":
        return client_cli.run_release(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goipd", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", default="/etc/goipd/goipd.yaml")
    check = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, else 1")
    check.add_argument("path")
    client_cli.add_send_arguments(sub.add_parser("send", help="send an SMS through goipd's API"))
    client_cli.add_lines_arguments(sub.add_parser("lines", help="every line and its state"))
    messages = sub.add_parser("messages", help="look at messages").add_subparsers(
        dest="messages_command", required=True
    )
    client_cli.add_show_arguments(messages.add_parser("show", help="one message, per recipient"))
    client_cli.add_quarantine_arguments(
        sub.add_parser("quarantine", help="take a line out of routing until released"),
        reason=True,
    )
    client_cli.add_quarantine_arguments(
        sub.add_parser("release", help="put a quarantined line back into routing"), reason=False
    )
    sub.add_parser("simulate", help="run a simulated GoIP fleet (see goipd simulate --help)")
    sub.add_parser("version", help="print the version")
    return parser


def _check_config(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: OK ({len(settings.servers)} servers)")
    return 0


def _run(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    configure_logging(settings.logging.level, settings.logging.format)
    from goipd.app import run_daemon

    return asyncio.run(run_daemon(settings))


if __name__ == "__main__":
    raise SystemExit(main())
