"""`goipd quarantine` and `goipd release`: take a line out of routing, and put it back."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from goipd.cli.client import add_connection_arguments, call


def add_quarantine_arguments(parser: argparse.ArgumentParser, *, reason: bool) -> None:
    parser.add_argument("server", help="SMS Server name")
    parser.add_argument("line", help="line id, e.g. G101")
    if reason:
        parser.add_argument("--reason", help="why, shown in `goipd lines` and on the status page")
    add_connection_arguments(parser)


def _quarantine_path(args: argparse.Namespace) -> str:
    server = urllib.parse.quote(args.server, safe="")
    line = urllib.parse.quote(args.line, safe="")
    return f"/api/v1/lines/{server}/{line}/quarantine"


def run_quarantine(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    status, reply = call(args, "PUT", _quarantine_path(args), body)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif status >= 400:
        print(f"error {status}: {reply.get('detail', reply)}", file=sys.stderr)
    else:
        print(f"{args.server}/{args.line} quarantined until released")
        if not reply["reported"]:
            print(
                f"  note: {args.server} does not report line {args.line} now; "
                "the quarantine applies when it appears",
                file=sys.stderr,
            )
    return 0 if status < 400 else 1


def run_release(args: argparse.Namespace) -> int:
    status, reply = call(args, "DELETE", _quarantine_path(args))
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif status >= 400:
        print(f"error {status}: {reply.get('detail', reply)}", file=sys.stderr)
    else:
        released = " and ".join(
            {"manual": "manual quarantine", "errors": "quarantine after line errors"}[kind]
            for kind in reply["released"]
        )
        print(f"{args.server}/{args.line} released ({released})")
    return 0 if status < 400 else 1
