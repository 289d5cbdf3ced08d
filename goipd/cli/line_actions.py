"""`goipd reboot`, `goipd ussd` and `goipd balance`: act on one line through its SMS Server, via
goipd's API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from goipd.cli.client import add_connection_arguments, call

USSD_WAIT = 180.0
"""The API answers a USSD code within balances.answer_timeout (130 s by default)."""


def add_reboot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="SMS Server name")
    parser.add_argument("line", help="line id, e.g. G101")
    parser.add_argument(
        "--device", action="store_true", help="reboot the whole GoIP the line is on"
    )
    add_connection_arguments(parser)


def add_ussd_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="SMS Server name")
    parser.add_argument("line", help="line id, e.g. G101")
    parser.add_argument("code", help="USSD code, e.g. *101#")
    add_connection_arguments(parser)


def add_balance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="SMS Server name")
    parser.add_argument("line", help="line id, e.g. G101")
    add_connection_arguments(parser)


def _path(args: argparse.Namespace, action: str) -> str:
    server = urllib.parse.quote(args.server, safe="")
    line = urllib.parse.quote(args.line, safe="")
    return f"/api/v1/lines/{server}/{line}/{action}"


def run_reboot(args: argparse.Namespace) -> int:
    status, reply = call(args, "POST", _path(args, "reboot"), {"device": args.device}, 90.0)
    what = "device of" if args.device else "module of"
    return _report(args, status, reply, f"rebooting the {what} {args.server}/{args.line}")


def run_ussd(args: argparse.Namespace) -> int:
    status, reply = call(args, "POST", _path(args, "ussd"), {"code": args.code}, USSD_WAIT)
    return _report(args, status, reply, None)


def run_balance(args: argparse.Namespace) -> int:
    status, reply = call(args, "POST", _path(args, "balance"), {}, USSD_WAIT)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif "detail" in reply and "value" not in reply:
        print(f"error {status}: {reply['detail']}", file=sys.stderr)
    elif reply["error"]:
        error = reply["error"]
        print(f"read failed ({error['reason']}): {error['detail']}", file=sys.stderr)
        if reply["value"] is not None:
            print(f"last balance: {reply['value']:g}", file=sys.stderr)
    else:
        low = " (LOW)" if reply["is_low"] else ""
        print(f"{reply['value']:g}{low}: {reply['answer']}")
    return 0 if status < 400 else 1


def _report(args: argparse.Namespace, status: int, reply: Any, done: str | None) -> int:
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif status >= 400 and "detail" in reply and "ok" not in reply:
        print(f"error {status}: {reply['detail']}", file=sys.stderr)
    elif not reply.get("ok"):
        print(f"failed after {reply['seconds']:.1f} s: {reply['detail']}", file=sys.stderr)
    else:
        print(f"{done}: {reply['detail']}" if done else reply["detail"])
    return 0 if status < 400 else 1
