"""`goipd send`: one SMS through goipd's API, with an optional route, schedule, priority,
validity and status callback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from goipd.cli.client import add_connection_arguments, call


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", action="append", required=True, help="recipient; repeat for several"
    )
    parser.add_argument("--text", required=True)
    parser.add_argument("--server", help="send through this server only")
    parser.add_argument("--line", help="... and this exact line (needs --server)")
    parser.add_argument("--provider", help="... or this carrier group (needs --server)")
    parser.add_argument("--idempotency-key")
    parser.add_argument("--send-at", help="RFC 3339 time for a scheduled send")
    parser.add_argument(
        "--priority",
        type=int,
        choices=range(4),
        help="0 bulk, 1 normal (default), 2 high, 3 urgent",
    )
    validity = parser.add_mutually_exclusive_group()
    validity.add_argument("--valid-for", help='unsent after this long, it expires (e.g. "5m")')
    validity.add_argument("--expires-at", help="RFC 3339 time after which it expires unsent")
    parser.add_argument("--status-url", help="POST recipient state changes there")
    parser.add_argument(
        "--status-events", help="comma-separated states to report (e.g. sent,delivered,failed)"
    )
    add_connection_arguments(parser)


def run_send(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to, "text": args.text}
    if args.server:
        route: dict[str, str] = {"server": args.server}
        if args.line:
            route["line"] = args.line
        if args.provider:
            route["provider"] = args.provider
        body["route"] = route
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    if args.send_at:
        body["send_at"] = args.send_at
    if args.priority is not None:
        body["priority"] = args.priority
    for option in ("valid_for", "expires_at", "status_url"):
        if getattr(args, option):
            body[option] = getattr(args, option)
    if args.status_events:
        body["status_events"] = [state.strip() for state in args.status_events.split(",")]
    status, reply = call(args, "POST", "/api/v1/messages", body)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif status >= 400:
        print(f"error {status}: {reply.get('detail', reply)}", file=sys.stderr)
    else:
        print(
            f"message {reply['id']}: {len(reply['recipients'])} recipient(s), "
            f"{reply['segments']} segment(s) {reply['encoding']}"
            + (" (idempotent repeat)" if status == 200 else "")
        )
        for recipient in reply["recipients"]:
            print(f"  {recipient['to']}  {recipient['state']}")
    return 0 if status < 400 else 1
