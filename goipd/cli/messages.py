"""`goipd messages show`: one message, per recipient."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from goipd.cli.client import add_connection_arguments, call


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="message id")
    add_connection_arguments(parser)


def run_show(args: argparse.Namespace) -> int:
    status, reply = call(args, "GET", f"/api/v1/messages/{urllib.parse.quote(args.id, safe='')}")
    if status >= 400:
        print(f"error {status}: {reply.get('detail', reply)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
        return 0
    print(
        f"message {reply['id']}  {reply['created_at']}  {reply['segments']} segment(s) "
        f"{reply['encoding']}"
    )
    print(f"  text: {reply['text']}")
    asked = [
        f"priority {reply['priority']}" if reply.get("priority", 1) != 1 else "",
        f"expires {reply['expires_at']}" if reply.get("expires_at") else "",
        f"status to {reply['status_url']}" if reply.get("status_url") else "",
    ]
    if any(asked):
        print("  " + ", ".join(part for part in asked if part))
    for r in reply["recipients"]:
        where = f"{r['server']}/{r['line']}" if r["server"] else (r["route"] or "-")
        error = f"  error {r['error']['code']}: {r['error']['meaning']}" if r["error"] else ""
        print(f"  {r['to']}  {r['state']}  via {where}  attempts {r['attempts']}{error}")
    return 0
