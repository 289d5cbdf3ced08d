"""Operator commands that talk to a running goipd over its HTTP API: `goipd send`,
`goipd lines`, `goipd messages show`, `goipd quarantine`, `goipd release`. Human tables by
default, the API's JSON with --json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("GOIPD_URL", "http://127.0.0.1:8080"),
        help="goipd base URL (env GOIPD_URL)",
    )
    parser.add_argument("--token-file", help="file holding the API token (else env GOIPD_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


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
    add_connection_arguments(parser)


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    return os.environ.get("GOIPD_TOKEN") or None


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"--url must be an http:// or https:// URL, got {args.url!r}")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - checked above
    request.add_header("Content-Type", "application/json")
    token = _token(args)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"detail": exc.reason}
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach goipd at {args.url}: {exc.reason}") from None


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


def add_lines_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="only this SMS Server")
    parser.add_argument("--unhealthy", action="store_true", help="only lines routing avoids")
    add_connection_arguments(parser)


def _quota(value: int | None) -> str:
    return "∞" if value is None else str(value)


def run_lines(args: argparse.Namespace) -> int:
    query = []
    if args.server:
        query.append(f"server={urllib.parse.quote(args.server)}")
    if args.unhealthy:
        query.append("healthy=false")
    status, reply = call(args, "GET", "/api/v1/lines" + ("?" + "&".join(query) if query else ""))
    if status >= 400:
        print(f"error {status}: {reply.get('detail', reply)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
        return 0
    for server in reply["servers"]:
        state = "up" if server["up"] else f"DOWN ({server['last_error_reason']})"
        print(f"{server['server']}: {state}, {server['lines']} lines")
    rows = [("SERVER", "LINE", "STATE", "HEALTHY", "TOTAL", "TODAY", "QUARANTINE")]
    for line in reply["lines"]:
        rows.append(
            (
                line["server"],
                line["line"],
                line["state"],
                "yes" if line["healthy"] else "no",
                _quota(line["remain_sms"]),
                _quota(line["day_remain_sms"]),
                _quarantine_note(line),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _quarantine_note(line: dict[str, Any]) -> str:
    notes = []
    manual = line.get("manual_quarantine")
    if manual is not None:
        notes.append("manual" + (f": {manual['reason']}" if manual["reason"] else ""))
    if line.get("quarantine_reason"):
        notes.append(line["quarantine_reason"])
    return "; ".join(notes)


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
    for r in reply["recipients"]:
        where = f"{r['server']}/{r['line']}" if r["server"] else (r["route"] or "-")
        error = f"  error {r['error']['code']}: {r['error']['meaning']}" if r["error"] else ""
        print(f"  {r['to']}  {r['state']}  via {where}  attempts {r['attempts']}{error}")
    return 0
