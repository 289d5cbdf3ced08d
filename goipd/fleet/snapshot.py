"""A server's state in the line registry as one JSON document, and back.

The instance that polls an SMS Server writes its snapshot to the ledger after each poll; the
other instances copy it into their registries, so every instance routes and answers the API
with the same view of the fleet. Copying is silent: transitions are logged, and fleet metrics
exported, by the polling instance alone. What each instance learns by itself is kept: the
line's last error and its line errors in a row (from the push reports it applied). Quarantines
are not in the snapshot: both kinds travel through the ledger (goipd/fleet/quarantine.py), and a
line new to this registry gets them from the registry's own copy.
"""

from __future__ import annotations

import json
from typing import Any

from goipd.fleet.registry import Line, LineRegistry, ServerState
from goipd.upstream.errors import ErrorReason

FORMAT = 2
SERVER_FIELDS = (
    "up",
    "polled",
    "last_poll",
    "last_success",
    "last_error",
    "consecutive_failures",
)
OPTIONAL_SERVER_FIELDS = ("stalled_since", "stall_detail")
"""Added after format 2 was released: a snapshot without them reads as "not stalled"."""
LINE_FIELDS = (
    "online",
    "registered",
    "reg_raw",
    "remain_sms",
    "day_remain_sms",
    "first_seen",
    "last_change",
    "last_seen",
    "gone",
    "quota_at_poll",
    "online_changes",
    "reg_changes",
)


class SnapshotError(ValueError):
    """A snapshot this goipd cannot read (written by another version, or damaged)."""


def encode(server: ServerState) -> str:
    doc: dict[str, Any] = {
        name: getattr(server, name) for name in (*SERVER_FIELDS, *OPTIONAL_SERVER_FIELDS)
    }
    doc["format"] = FORMAT
    reason = server.last_error_reason
    doc["last_error_reason"] = reason.value if reason is not None else None
    # One array per line: a server of 500 lines is a few tens of kB, written every poll.
    doc["lines"] = [
        [line.line_id, *(getattr(line, name) for name in LINE_FIELDS)]
        for line in server.lines.values()
    ]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def apply(registry: LineRegistry, name: str, body: str) -> None:
    """Make the registry's copy of server `name` what `body` says (no log, no metric)."""
    server = registry.servers.get(name)
    if server is None:
        return
    try:
        doc = json.loads(body)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"snapshot format {doc.get('format')!r}, expected {FORMAT}")
        fields = {key: doc[key] for key in SERVER_FIELDS}
        fields.update({key: doc.get(key) for key in OPTIONAL_SERVER_FIELDS})
        reason = doc["last_error_reason"]
        error_reason = ErrorReason(reason) if reason is not None else None
        rows = [(str(row[0]), dict(zip(LINE_FIELDS, row[1:], strict=True))) for row in doc["lines"]]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise SnapshotError(str(exc)[:120]) from None
    for key, value in fields.items():
        setattr(server, key, value)
    server.last_error_reason = error_reason
    lines: dict[str, Line] = {}
    reshaped = False
    for line_id, values in rows:
        line = server.lines.get(line_id)
        if line is None:
            line = Line(server=name, line_id=line_id, **values)
            registry.adopt_quarantines(line)
            reshaped = True
        else:
            reshaped = reshaped or line.gone != values["gone"]
            for key, value in values.items():
                setattr(line, key, value)
        lines[line_id] = line
    if reshaped or lines.keys() != server.lines.keys():
        # Routing rebuilds its line order when the set of lines changes, as after a poll.
        registry.generation += 1
    server.lines = lines
