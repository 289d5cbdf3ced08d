"""The fleet's gauges (goipd_line_*, goipd_server_*), read from the line registry at scrape time.

They are not stored in prometheus_client children: that keeps polling cheap (no metric updates
per line per poll) and makes series of gone lines and removed servers disappear by
construction. A scrape of 32,000 lines is ~280,000 samples: the text is cached per server and
formatted only where something changed since the last scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from goipd.fleet.registry import LineRegistry, ServerState
from goipd.metrics.catalog import Metrics
from goipd.metrics.exposition import (
    TextCollector,
    count_text,
    escape_label,
    go_float,
    header,
)


class FleetCollector(TextCollector):
    def __init__(self, fleet: LineRegistry, metrics: Metrics | None = None) -> None:
        """Registers itself with `metrics` when given (as prometheus_client's collectors do)."""
        self.fleet = fleet
        self._servers: dict[str, _ServerText] = {}
        self._headers: tuple[bytes, ...] | None = None
        if metrics is not None:
            metrics.register_text_collector(self)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "goipd_server_up",
            "Last poll of this SMS Server succeeded (1) or failed (0).",
            labels=["server"],
        )
        stalled = GaugeMetricFamily(
            "goipd_server_stalled",
            "1 while the SMS Server's engine is stalled: sends it accepted stay unsend and none "
            "of its sends moves on, although its lines say LOGIN. Routing leaves it alone.",
            labels=["server"],
        )
        online = _gauge("goipd_line_online", "Line connected to its SMS Server (1/0).")
        registered = _gauge("goipd_line_registered", "SIM registered on the network (reg LOGIN).")
        remaining = _gauge(
            "goipd_line_remaining_sms", "Total SMS quota left; absent when unlimited."
        )
        day_remaining = _gauge(
            "goipd_line_day_remaining_sms", "SMS quota left today; absent when unlimited."
        )
        unlimited = GaugeMetricFamily(
            "goipd_line_unlimited",
            "1 where the total or day quota is unlimited (-1), else 0.",
            labels=["server", "line", "quota"],
        )
        changes = CounterMetricFamily(
            "goipd_line_state_changes",
            "Transitions of the line's online or reg field.",
            labels=["server", "line", "field"],
        )
        last_change = _gauge(
            "goipd_line_last_change_timestamp_seconds", "When online/reg of the line last changed."
        )
        healthy = _gauge("goipd_line_healthy", "Routing considers the line usable (1/0).")
        # Present only while a line is quarantined: at most a handful of the fleet's lines, so
        # no zero series for every line at every scrape.
        quarantined = GaugeMetricFamily(
            "goipd_line_quarantined",
            "1 while the line is quarantined; kind: errors (after repeated line errors, until "
            "routing.quarantine_for ends) or manual (by an operator, until released).",
            labels=["server", "line", "kind"],
        )
        now = time.time()
        for server in self.fleet.servers.values():
            if not server.owned:
                continue  # exported by the instance that polls it (goipd/fleet/ha.py), not twice
            up.add_metric([server.name], 1.0 if server.up else 0.0)
            stalled.add_metric([server.name], 1.0 if server.stalled_since is not None else 0.0)
            for line in server.lines.values():
                if line.gone:
                    continue
                labels = [server.name, line.line_id]
                online.add_metric(labels, 1.0 if line.online else 0.0)
                registered.add_metric(labels, 1.0 if line.registered else 0.0)
                if line.remain_sms is not None:
                    remaining.add_metric(labels, float(line.remain_sms))
                if line.day_remain_sms is not None:
                    day_remaining.add_metric(labels, float(line.day_remain_sms))
                unlimited.add_metric([*labels, "total"], 1.0 if line.remain_sms is None else 0.0)
                unlimited.add_metric([*labels, "day"], 1.0 if line.day_remain_sms is None else 0.0)
                changes.add_metric([*labels, "online"], float(line.online_changes))
                changes.add_metric([*labels, "reg"], float(line.reg_changes))
                last_change.add_metric(labels, line.last_change)
                healthy.add_metric(labels, 1.0 if line.healthy else 0.0)
                if line.auto_quarantined(now):
                    quarantined.add_metric([*labels, "errors"], 1.0)
                if line.manual_quarantine is not None:
                    quarantined.add_metric([*labels, "manual"], 1.0)
        yield from (
            up,
            stalled,
            online,
            registered,
            remaining,
            day_remaining,
            unlimited,
            changes,
            last_change,
            healthy,
            quarantined,
        )

    # `collect()` above is the definition of the fleet families; `text_parts()` below writes
    # the same exposition text without building them, from per-server blocks that are
    # re-rendered only when one of the server's lines changed (tests/test_perf_fixes.py checks
    # that both give the same text). A family added to one must be added to the other.

    def text_parts(self) -> Iterator[bytes | None]:
        """The exposition text of the fleet families (UTF-8), in parts; None between two steps,
        where a caller on the event loop may let other work run."""
        if self._headers is None:
            self._headers = _fleet_headers()
        blocks: list[tuple[bytes, ...]] = []
        cache: dict[str, _ServerText] = {}
        now = time.time()
        for server in list(self.fleet.servers.values()):
            if not server.owned:
                continue  # as in collect()
            rendered = _render_server(server, self._servers.get(server.name), now)
            cache[server.name] = rendered
            blocks.append(rendered.blocks)
            yield None
        self._servers = cache  # removed servers drop out of the cache here
        for index, head in enumerate(self._headers):
            yield head
            yield b"".join([block[index] for block in blocks])
            yield None


@dataclass(frozen=True, slots=True)
class _ServerText:
    up: bool
    stalled: bool
    values: tuple[tuple[Any, ...], ...]
    lines: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]]
    """line id → (its values, its text per family)"""
    blocks: tuple[bytes, ...]
    """The server's samples of each fleet family, in collect() order."""


def _fleet_headers() -> tuple[bytes, ...]:
    """HELP and TYPE of each fleet family, taken from collect() itself (empty fleet)."""
    families = list(FleetCollector(LineRegistry()).collect())
    heads = tuple(
        header(
            f"{f.name}_total" if f.type == "counter" else f.name, f.type, f.documentation
        ).encode()
        for f in families
    )
    if len(heads) != len(_GONE) + 2:
        raise AssertionError("FleetCollector.collect() and _line_text() disagree on families")
    return heads


def _render_server(server: ServerState, old: _ServerText | None, now: float) -> _ServerText:
    # Everything a sample of the line depends on; equal values, equal text. `healthy` is left
    # out: it follows from these (state and quarantine) and costs more to compute than the rest.
    values = tuple(
        [
            (
                line.line_id,
                line.gone,
                line.online,
                line.registered,
                line.remain_sms,
                line.day_remain_sms,
                line.online_changes,
                line.reg_changes,
                line.last_change,
                line.auto_quarantined(now),
                line.manual_quarantine is not None,
            )
            for line in server.lines.values()
        ]
    )
    stalled = server.stalled_since is not None
    if old is not None and old.up == server.up and old.stalled == stalled and old.values == values:
        return old
    server_label = f'server="{escape_label(server.name)}"'
    previous = old.lines if old is not None else {}
    lines: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
    texts = []
    stamps: dict[float, str] = {}
    for line, value in zip(server.lines.values(), values, strict=True):
        cached = previous.get(value[0])
        if cached is None or cached[0] != value:
            cached = (value, _line_text(server_label, value, line.healthy, stamps))
        lines[value[0]] = cached
        texts.append(cached[1])
    up = f"goipd_server_up{{{server_label}}} {'1.0' if server.up else '0.0'}\n"
    stall = f"goipd_server_stalled{{{server_label}}} {'1.0' if stalled else '0.0'}\n"
    blocks = tuple(
        block.encode()
        for block in (
            up,
            stall,
            *("".join([text[i] for text in texts]) for i in range(len(_GONE))),
        )
    )
    return _ServerText(server.up, stalled, values, lines, blocks)


_GONE = ("",) * 9


def _line_text(
    server_label: str, value: tuple[Any, ...], healthy: bool, stamps: dict[float, str]
) -> tuple[str, ...]:
    """One line's samples of each per-line family (after the server families), as generate_latest
    writes them: labels sorted by name, values through floatToGoString."""
    (line_id, gone, online, registered, remain, day_remain, online_changes, reg_changes) = value[:8]
    last_change, auto_quarantined, manual_quarantine = value[8:]
    if gone:
        return _GONE
    # The lines of a server mostly share their last change (the poll they appeared in).
    stamp = stamps.get(last_change)
    if stamp is None:
        stamp = stamps[last_change] = go_float(last_change)
    line_label = f'line="{escape_label(line_id)}"'
    labels = f"{{{line_label},{server_label}}}"
    return (
        f"goipd_line_online{labels} {'1.0' if online else '0.0'}\n",
        f"goipd_line_registered{labels} {'1.0' if registered else '0.0'}\n",
        "" if remain is None else f"goipd_line_remaining_sms{labels} {count_text(remain)}\n",
        ""
        if day_remain is None
        else f"goipd_line_day_remaining_sms{labels} {count_text(day_remain)}\n",
        f'goipd_line_unlimited{{{line_label},quota="total",{server_label}}} '
        f"{'1.0' if remain is None else '0.0'}\n"
        f'goipd_line_unlimited{{{line_label},quota="day",{server_label}}} '
        f"{'1.0' if day_remain is None else '0.0'}\n",
        f'goipd_line_state_changes_total{{field="online",{line_label},{server_label}}} '
        f"{count_text(online_changes)}\n"
        f'goipd_line_state_changes_total{{field="reg",{line_label},{server_label}}} '
        f"{count_text(reg_changes)}\n",
        f"goipd_line_last_change_timestamp_seconds{labels} {stamp}\n",
        f"goipd_line_healthy{labels} {'1.0' if healthy else '0.0'}\n",
        (
            f'goipd_line_quarantined{{kind="errors",{line_label},{server_label}}} 1.0\n'
            if auto_quarantined
            else ""
        )
        + (
            f'goipd_line_quarantined{{kind="manual",{line_label},{server_label}}} 1.0\n'
            if manual_quarantine
            else ""
        ),
    )


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["server", "line"])
