"""The `goipd` command line: the verbs and their arguments; one module per verb does the work."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from goipd import __version__
from goipd.cli import line_actions, lines, messages, push_urls, quarantine, run, send


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        # The simulator has its own option set; hand it everything after the verb.
        from goipd.sim.runner import main_simulate

        return main_simulate(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    try:
        return _verb(parser, args)
    except BrokenPipeError:
        # The reader went away (`goipd lines | head`): what it did not read is no error, and
        # the interpreter's own flush of stdout at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _verb(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.version or args.command == "version":
        print(f"goipd {__version__}")
        return 0
    if args.command == "check-config":
        return run.check_config(args.path)
    if args.command == "run":
        return run.run(args.config)
    if args.command == "push-urls":
        return push_urls.run(args)
    if args.command == "send":
        return send.run_send(args)
    if args.command == "lines":
        return lines.run_lines(args)
    if args.command == "messages":
        return messages.run_show(args)
    if args.command == "quarantine":
        return quarantine.run_quarantine(args)
    if args.command == "reboot":
        return line_actions.run_reboot(args)
    if args.command == "ussd":
        return line_actions.run_ussd(args)
    if args.command == "balance":
        return line_actions.run_balance(args)
    if args.command == "release":
        return quarantine.run_release(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goipd", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    run_parser = sub.add_parser("run", help="run the daemon")
    run_parser.add_argument("--config", "-c", default="/etc/goipd/goipd.yaml")
    check = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, else 1")
    check.add_argument("path")
    push_urls.add_arguments(
        sub.add_parser("push-urls", help="the push URLs to paste into each SMS Server")
    )
    send.add_send_arguments(sub.add_parser("send", help="send an SMS through goipd's API"))
    lines.add_lines_arguments(sub.add_parser("lines", help="every line and its state"))
    messages_parser = sub.add_parser("messages", help="look at messages").add_subparsers(
        dest="messages_command", required=True
    )
    messages.add_show_arguments(
        messages_parser.add_parser("show", help="one message, per recipient")
    )
    quarantine.add_quarantine_arguments(
        sub.add_parser("quarantine", help="take a line out of routing until released"),
        reason=True,
    )
    quarantine.add_quarantine_arguments(
        sub.add_parser("release", help="put a quarantined line back into routing"), reason=False
    )
    line_actions.add_reboot_arguments(
        sub.add_parser("reboot", help="reboot a line's GSM module (or its device) via its server")
    )
    line_actions.add_ussd_arguments(
        sub.add_parser("ussd", help="send a USSD code on a line and print the answer")
    )
    line_actions.add_balance_arguments(
        sub.add_parser("balance", help="read a line's prepaid balance now (balances.checks)")
    )
    sub.add_parser("simulate", help="run a simulated GoIP fleet (see goipd simulate --help)")
    sub.add_parser("version", help="print the version")
    return parser
