"""`goipd lines`: every line, its state, quotas and quarantine, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from goipd.cli.client import add_connection_arguments, call


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
        if server.get("stalled"):
            state += f", STALLED ({server.get('stall_detail')}): not routed to"
        print(f"{server['server']}: {state}, {server['lines']} lines")
    rows = [
        (
            "SERVER",
            "LINE",
            "STATE",
            "HEALTHY",
            "TOTAL",
            "TODAY",
            "BALANCE",
            "SIGNAL",
            "QUARANTINE / REPAIR",
        )
    ]
    for line in reply["lines"]:
        rows.append(
            (
                line["server"],
                line["line"],
                line["state"],
                "yes" if line["healthy"] else "no",
                _quota(line["remain_sms"]),
                _quota(line["day_remain_sms"]),
                _balance(line.get("balance")),
                _signal(line.get("device")),
                _quarantine_note(line),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _balance(balance: dict[str, Any] | None) -> str:
    if balance is None:
        return "-"
    value = balance["value"]
    text = "?" if value is None else f"{value:g}"
    if balance.get("is_low"):
        text += " LOW"
    if balance.get("error"):
        text += f" (read failed: {balance['error']['reason']})"
    return text


def _signal(device: dict[str, Any] | None) -> str:
    """The signal in dBm, or what keeps the port from having one; `-` without a device."""
    if device is None:
        return "-"
    dbm = device["signal_dbm"]
    if device["module_on"] is False:
        text = "module off"
    elif device["sim_present"] is False:
        text = "no SIM"
    elif dbm is None:
        text = "?"
    else:
        text = f"{dbm} dBm" + (" WEAK" if device.get("weak_signal") else "")
    if device.get("stale"):
        text += " (stale)"
    if device.get("error"):
        text += f" (device: {device['error']['reason']})"
    return text


def _quarantine_note(line: dict[str, Any]) -> str:
    notes = []
    manual = line.get("manual_quarantine")
    if manual is not None:
        notes.append("manual" + (f": {manual['reason']}" if manual["reason"] else ""))
    if line.get("quarantine_reason"):
        notes.append(line["quarantine_reason"])
    remediation = line.get("remediation")
    if remediation is not None and remediation["result"] != "recovered":
        notes.append(f"{remediation['action']} {remediation['result']}")
    return "; ".join(notes)
