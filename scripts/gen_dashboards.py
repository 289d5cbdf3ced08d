#!/usr/bin/env python3
"""Writes goipd's Grafana dashboards: grafana/dashboards/{fleet-overview,line-detail}.json.

The dashboards are code so that a query is written once (the line-state expressions are shared by
several panels), the layout is computed instead of hand-placed, and a review of a change is a
review of a few lines of Python rather than of hundreds of lines of JSON. The output is
deterministic: tests/metrics/test_observability.py runs this script and compares the result with the
committed files byte for byte, so always commit both.

    python scripts/gen_dashboards.py            # rewrite the committed JSON
    python scripts/gen_dashboards.py --check    # exit 1 if the committed JSON is out of date
    python scripts/gen_dashboards.py --out DIR  # write somewhere else

Metric names are the contract of docs/metrics-and-alerts.md ("Metrics"); the test checks every
one used here. Every panel's title must also be described there ("Dashboards").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "grafana" / "dashboards"

# Every panel and query names the data source through the template variable, never by UID:
# UIDs differ between Grafana instances, so a hard-coded one breaks the import elsewhere.
DS: Json = {"type": "prometheus", "uid": "${datasource}"}

SCHEMA_VERSION = 39
FLEET_UID = "goipd-fleet"
LINE_UID = "goipd-line"

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"


# ---------------------------------------------------------------------------------------------
# Building blocks


def target(
    expr: str, legend: str = "", *, ref: str = "A", table: bool = False, instant: bool = False
) -> Json:
    """One Prometheus query. `table` queries are instant and come back as one row per series."""
    instant = instant or table
    t: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if table:
        t["format"] = "table"
    return t


def targets(*queries: tuple[str, str]) -> list[Json]:
    """(expr, legend) pairs with refIds A, B, C, ..."""
    return [target(e, legend, ref=chr(ord("A") + i)) for i, (e, legend) in enumerate(queries)]


def thresholds(*steps: tuple[float, str], base: str = GREEN) -> Json:
    """Colour steps above a base colour (the colour of everything below the first step)."""
    out: list[Json] = [{"color": base, "value": None}]
    out.extend({"color": color, "value": value} for value, color in steps)
    return {"mode": "absolute", "steps": out}


def value_mappings(*items: tuple[int, str, str]) -> list[Json]:
    """(value, text, colour) → one Grafana value mapping."""
    options = {
        str(value): {"index": i, "text": text, "color": color}
        for i, (value, text, color) in enumerate(items)
    }
    return [{"type": "value", "options": options}]


def panel(kind: str, title: str, description: str, targets_: Sequence[Json], **extra: Any) -> Json:
    p: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": list(targets_),
    }
    p.update(extra)
    return p


def timeseries(
    title: str,
    description: str,
    targets_: Sequence[Json],
    *,
    unit: str = "short",
    stack: bool = False,
    bars: bool = False,
    minimum: float | None = None,
    threshold_line: float | None = None,
    overrides: Sequence[Json] = (),
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if stack or bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line" if threshold_line is not None else "off"},
    }
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "thresholds": thresholds(*([(threshold_line, RED)] if threshold_line is not None else [])),
    }
    if minimum is not None:
        defaults["min"] = minimum
    return panel(
        "timeseries",
        title,
        description,
        targets_,
        fieldConfig={"defaults": defaults, "overrides": list(overrides)},
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    description: str,
    targets_: Sequence[Json],
    *,
    unit: str = "short",
    steps: Sequence[tuple[float, str]] = (),
    base: str = GREEN,
    mappings: Sequence[Json] = (),
    no_value: str | None = None,
    graph: bool = False,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds(*steps, base=base),
        "mappings": list(mappings),
    }
    if no_value is not None:
        defaults["noValue"] = no_value
    return panel(
        "stat",
        title,
        description,
        targets_,
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
    )


def table(
    title: str,
    description: str,
    targets_: Sequence[Json],
    *,
    columns: dict[str, str],
    order: Sequence[str],
    sort_by: tuple[str, bool] | None = None,
    overrides: Sequence[Json] = (),
) -> Json:
    """Instant queries merged on their labels; `columns` renames fields (e.g. "Value #A")."""
    index = {name: i for i, name in enumerate(order)}
    exclude = {"Time": True}
    options: Json = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by is not None:
        options["sortBy"] = [{"displayName": sort_by[0], "desc": sort_by[1]}]
    return panel(
        "table",
        title,
        description,
        targets_,
        fieldConfig={
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": thresholds(),
                "custom": {"align": "auto", "filterable": True},
            },
            "overrides": list(overrides),
        },
        options=options,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": exclude,
                    "indexByName": index,
                    "renameByName": columns,
                },
            },
        ],
    )


def state_timeline(
    title: str, description: str, targets_: Sequence[Json], overrides: Sequence[Json]
) -> Json:
    return panel(
        "state-timeline",
        title,
        description,
        targets_,
        fieldConfig={
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": thresholds(),
                "custom": {"fillOpacity": 75, "lineWidth": 0},
            },
            "overrides": list(overrides),
        },
        options={
            "mergeValues": True,
            "showValue": "auto",
            "alignValue": "left",
            "rowHeight": 0.85,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def override(matcher: str, name: str, **properties: Any) -> Json:
    """Field override: matcher is "byName" (field/column) or "byFrameRefID" (query)."""
    return {
        "matcher": {"id": matcher, "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def color_override(name: str, color: str) -> Json:
    return override("byName", name, color={"mode": "fixed", "fixedColor": color})


class Layout:
    """Places panels left to right on Grafana's 24-column grid, starting a new row when full."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._next_id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, p: Json, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        p["id"] = self._next_id()
        p["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(p)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def datasource_variable() -> Json:
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False
) -> Json:
    v: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "current": {},
        "hide": 0,
        "includeAll": include_all,
        "multi": multi,
        "options": [],
        # 2 = refresh when the time range changes, so new lines and servers appear.
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }
    if include_all:
        # ".*" rather than a list of the values: it also matches the cloud routes' server="".
        v["allValue"] = ".*"
    return v


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], layout: Layout
) -> Json:
    return {
        # Grafana adds its built-in "Annotations & Alerts" itself; listing it here would hard-code
        # the Grafana data source UID that the tests forbid.
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "type": "dashboards",
                "title": "goipd",
                "tags": ["goipd"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["goipd"],
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------------------------------------
# Shared PromQL


def line_state_queries(sel: str) -> dict[str, str]:
    """Lines per state, as the line registry computes it (offline > logged_out > quota_exhausted
    > registered), derived from the gauges. `or vector(0)` draws 0 instead of a gap."""
    online1 = f"(goipd_line_online{sel} == 1)"
    reg1 = f"(goipd_line_registered{sel} == 1)"
    reg0 = f"(goipd_line_registered{sel} == 0)"
    exhausted = f"(goipd_line_remaining_sms{sel} == 0 or goipd_line_day_remaining_sms{sel} == 0)"
    on = "on (server, line)"
    return {
        "registered": f"count({online1} and {on} {reg1} unless {on} {exhausted}) or vector(0)",
        "logged out": f"count({online1} and {on} {reg0}) or vector(0)",
        "offline": f"count(goipd_line_online{sel} == 0) or vector(0)",
        "quota exhausted": f"count({online1} and {on} {reg1} and {on} {exhausted}) or vector(0)",
    }


STATE_COLORS = {
    "registered": GREEN,
    "logged out": ORANGE,
    "offline": RED,
    "quota exhausted": YELLOW,
}


def with_cms_meaning(by_code: str) -> str:
    """Adds the `meaning` label of goipd_cms_error_info to a vector by `code`. max by dedups the
    info series when several goipd instances are scraped; codes outside the table (and "none",
    a failure reported without a code) keep a placeholder meaning instead of vanishing."""
    return (
        f"{by_code} * on (code) group_left (meaning) max by (code, meaning) (goipd_cms_error_info)"
        f' or on (code) label_replace({by_code}, "meaning", "not in the CMS ERROR table", "", "")'
    )


def quota_or_unlimited(metric: str, sel: str, quota: str) -> str:
    """Quota left, or -1 (GoIP's own notation, mapped to "unlimited") where the series is absent
    because the quota is unlimited."""
    return (
        f"max by (server, line) ({metric}{sel}) or on (server, line)"
        f' (-1 * max by (server, line) (goipd_line_unlimited{{quota="{quota}", {sel[1:-1]}}} == 1))'
    )


UNLIMITED = value_mappings((-1, "unlimited", BLUE))
WEAK_SIGNAL_DBM = -103
"""CSQ 5 and below: GoipdLineSignalWeak's threshold."""
ENGINE = value_mappings((0, "sending", GREEN), (1, "stalled", RED))
"""goipd_server_stalled: the SMS Server's engine sends, or it is stalled."""


# ---------------------------------------------------------------------------------------------
# Fleet overview


def fleet_overview() -> Json:
    s = '{server=~"$server"}'
    s_in = 'server=~"$server"'
    lay = Layout()

    lay.row("Fleet now")
    lay.add(
        stat(
            "SMS Servers up",
            "SMS Servers whose last poll succeeded, and how many are configured.",
            targets(
                (f"sum(goipd_server_up{s})", "up"),
                (f"count(goipd_server_up{s})", "configured"),
            ),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Lines registered",
            "Lines that are online with their SIM registered, out of all lines reported.",
            targets(
                (
                    f"sum(goipd_line_online{s} * on (server, line) goipd_line_registered{s})",
                    "registered",
                ),
                (f"count(goipd_line_online{s})", "lines"),
            ),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Lines usable",
            "Lines routing may use now: registered, quota left, not quarantined.",
            targets((f"sum(goipd_line_healthy{s})", "usable")),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Queued",
            "Recipients waiting to be sent.",
            targets(('sum(goipd_queue_messages{state="queued"})', "queued")),
            steps=[(100, YELLOW), (1000, RED)],
            graph=True,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Oldest waiting",
            "Age of the oldest recipient not yet sent (GoipdQueueOldestTooOld fires above 15m).",
            targets(("max(goipd_queue_oldest_age_seconds)", "oldest")),
            unit="s",
            steps=[(300, YELLOW), (900, RED)],
            graph=True,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Sent, last hour",
            "Sends that the SMS Server or provider reported as succeeded in the last hour.",
            targets(
                (f'sum(increase(goipd_sms_sent_total{{result="succeeded", {s_in}}}[1h]))', "sent")
            ),
            graph=True,
        ),
        4,
        4,
    )

    lay.row("SMS Servers and lines")
    server_cols = {
        "Value #A": "Up",
        "Value #G": "Engine",
        "Value #B": "Lines",
        "Value #C": "Online",
        "Value #D": "Registered",
        "Value #E": "Usable",
        "Value #F": "Poll errors (1h)",
    }
    lay.add(
        table(
            "SMS Servers",
            "One row per SMS Server: reachable or not, its engine sending or stalled, its lines by "
            "state and its poll errors in the last hour.",
            [
                target(f"max by (server) (goipd_server_up{s})", ref="A", table=True),
                target(f"count by (server) (goipd_line_online{s})", ref="B", table=True),
                target(f"sum by (server) (goipd_line_online{s})", ref="C", table=True),
                target(f"sum by (server) (goipd_line_registered{s})", ref="D", table=True),
                target(f"sum by (server) (goipd_line_healthy{s})", ref="E", table=True),
                target(
                    f"sum by (server) (increase(goipd_server_poll_errors_total{s}[1h]))",
                    ref="F",
                    table=True,
                ),
                target(f"max by (server) (goipd_server_stalled{s})", ref="G", table=True),
            ],
            columns=server_cols,
            order=["server", *server_cols.values()],
            sort_by=("Up", False),
            overrides=[
                override(
                    "byName",
                    "Up",
                    mappings=value_mappings((1, "up", GREEN), (0, "down", RED)),
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
                override(
                    "byName",
                    "Engine",
                    mappings=ENGINE,
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Lines online and registered per server",
            "Per SMS Server, how many of its lines are connected and how many have their SIM "
            "registered.",
            targets(
                (f"sum by (server) (goipd_line_online{s})", "{{server}} online"),
                (f"sum by (server) (goipd_line_registered{s})", "{{server}} registered"),
            ),
            minimum=0,
        ),
        12,
        8,
    )
    states = line_state_queries(s)
    lay.add(
        timeseries(
            "Lines by state",
            "All lines stacked by state, derived from the line gauges the same way goipd does: "
            "offline, else logged out (SIM not registered), else quota exhausted (total or "
            "today), else registered.",
            targets(*((expr, name) for name, expr in states.items())),
            stack=True,
            minimum=0,
            overrides=[color_override(name, STATE_COLORS[name]) for name in states],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Quota left today per server",
            "Sum of today's quota left over the lines of each server that have a day limit.",
            targets((f"sum by (server) (goipd_line_day_remaining_sms{s})", "{{server}}")),
            minimum=0,
        ),
        12,
        8,
    )
    quota_cols = {"Value #A": "Total left", "Value #B": "Today left", "Value #C": "Usable"}
    line_link = override(
        "byName",
        "line",
        links=[
            {
                "title": "Line detail",
                "url": f"/d/{LINE_UID}/goipd-line-detail?${{datasource:queryparam}}"
                "&var-server=${__data.fields.server}&var-line=${__data.fields.line}"
                "&${__url_time_range}",
            }
        ],
    )
    lay.add(
        table(
            "Quota left per line",
            "Every line's total and daily quota left (unlimited where the SMS Server sets none) "
            "and whether routing may use it; click a line for its detail dashboard.",
            [
                target(
                    quota_or_unlimited("goipd_line_remaining_sms", s, "total"), ref="A", table=True
                ),
                target(
                    quota_or_unlimited("goipd_line_day_remaining_sms", s, "day"),
                    ref="B",
                    table=True,
                ),
                target(f"max by (server, line) (goipd_line_healthy{s})", ref="C", table=True),
            ],
            columns=quota_cols,
            order=["server", "line", *quota_cols.values()],
            sort_by=("Today left", False),
            overrides=[
                override("byName", "Total left", mappings=UNLIMITED),
                override("byName", "Today left", mappings=UNLIMITED),
                override(
                    "byName",
                    "Usable",
                    mappings=value_mappings((1, "yes", GREEN), (0, "no", RED)),
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
                line_link,
            ],
        ),
        24,
        10,
    )
    device_cols = {"Value #A": "Signal", "Value #B": "SIM"}
    lay.add(
        table(
            "Weak signal and SIM absent lines",
            "Lines whose GoIP device shows a signal of -103 dBm or weaker (CSQ 5 or less, "
            "GoipdLineSignalWeak after 30 minutes) or no SIM in the port (GoipdSimAbsent); "
            "only lines on a configured device (servers[].devices). Empty: all is well.",
            [
                target(
                    f"max by (server, line) (goipd_line_signal_dbm{s}) <= {WEAK_SIGNAL_DBM}",
                    ref="A",
                    table=True,
                ),
                target(
                    f"max by (server, line) (goipd_line_sim_present{s}) == 0", ref="B", table=True
                ),
            ],
            columns=device_cols,
            order=["server", "line", *device_cols.values()],
            sort_by=("Signal", False),
            overrides=[
                override("byName", "Signal", unit="dBm"),
                override(
                    "byName",
                    "SIM",
                    mappings=value_mappings((0, "absent", RED)),
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
                line_link,
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Failed GoIP device polls",
            "Failed polls of the GoIP devices' status pages by device and reason (timeout, "
            "connect, auth, parse, ...). A device poll error changes nothing of its lines' "
            "state; failing for 15 minutes while its SMS Server answers, GoipdDeviceUnreachable.",
            targets(
                (
                    "sum by (server, device, result) (increase(goipd_device_polls_total"
                    f'{{result!="ok", {s_in}}}[$__rate_interval])) > 0',
                    "{{server}}/{{device}} {{result}}",
                )
            ),
            bars=True,
            minimum=0,
        ),
        12,
        8,
    )

    lay.row("Sending")
    lay.add(
        timeseries(
            "Sends per second by route and result",
            "Send results: succeeded and failed as reported by the SMS Server or provider, "
            "rejected when the send was refused before reaching the network.",
            targets(
                (
                    f"sum by (route, result) (rate(goipd_sms_sent_total{s}[$__rate_interval]))",
                    "{{route}} {{result}}",
                )
            ),
            unit="reqps",
            minimum=0,
        ),
        12,
        8,
    )
    failed = f'{{result=~"failed|rejected", {s_in}}}'
    all_sent = f"sum by (route) (rate(goipd_sms_sent_total{s}[$__rate_interval]))"
    lay.add(
        timeseries(
            "Failure ratio by route",
            "Share of send results that are failed or rejected, per route.",
            targets(
                (
                    f"(sum by (route) (rate(goipd_sms_sent_total{failed}[$__rate_interval]))"
                    f" or 0 * {all_sent}) / {all_sent}",
                    "{{route}}",
                )
            ),
            unit="percentunit",
            minimum=0,
            threshold_line=0.2,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Accepted and delivered per second",
            "Recipients accepted by the API, and delivery receipts per route.",
            targets(
                ("sum(rate(goipd_messages_accepted_total[$__rate_interval]))", "accepted"),
                (
                    f"sum by (route) (rate(goipd_sms_delivered_total{s}[$__rate_interval]))",
                    "{{route}} delivered",
                ),
            ),
            unit="reqps",
            minimum=0,
        ),
        12,
        8,
    )
    cms_rate = f"sum by (code) (rate(goipd_cms_errors_total{s}[$__rate_interval]))"
    lay.add(
        timeseries(
            "CMS errors per second by code",
            "Failed sends by CMS ERROR code, labelled with the code's meaning.",
            targets((with_cms_meaning(cms_rate), "{{code}} {{meaning}}")),
            unit="reqps",
            minimum=0,
        ),
        12,
        8,
    )
    top = f"topk(10, sum by (code) (increase(goipd_cms_errors_total{s}[$__range])))"
    lay.add(
        table(
            "Top CMS error codes in the time range",
            "The ten CMS ERROR codes that failed the most sends in the selected time range, "
            'with their meanings ("none": a failure reported without a code).',
            [target(f"sort_desc({with_cms_meaning(top)})", ref="A", table=True)],
            columns={"code": "Code", "meaning": "Meaning", "Value": "Failed sends"},
            order=["code", "meaning", "Value"],
            sort_by=("Failed sends", True),
        ),
        24,
        8,
    )

    lay.row("Inbound, reports and reconciliation")
    lay.add(
        timeseries(
            "Inbound SMS per second",
            "SMS received by the lines of each server.",
            targets(
                (
                    f"sum by (server) (rate(goipd_inbound_sms_total{s}[$__rate_interval]))",
                    "{{server}}",
                )
            ),
            unit="reqps",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Push reports by outcome",
            "Hooks received from the SMS Servers and providers (status and inbound) by outcome; "
            "unauthorized means a wrong token or address, unknown_task a report for a send goipd "
            "did not make, held a provider report that came before its send was recorded (see "
            "goipd_cloud_reports_held_total).",
            targets(
                (
                    "sum by (kind, outcome) (rate(goipd_push_reports_total"
                    '{source=~"$server"}[$__rate_interval]))',
                    "{{kind}} {{outcome}}",
                )
            ),
            unit="reqps",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Reconciliation and ambiguous resends",
            "querysms calls that recover lost push reports, by result, and recipients re-sent "
            "after a send of unknown fate (each may arrive twice).",
            targets(
                (
                    "sum by (server, result) (rate(goipd_reconcile_queries_total"
                    f"{s}[$__rate_interval]))",
                    "{{server}} querysms {{result}}",
                ),
                (
                    "sum(rate(goipd_dispatch_ambiguous_total[$__rate_interval]))",
                    "ambiguous resends",
                ),
            ),
            unit="reqps",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Stalled engines and late sends",
            "SMS Servers whose engine is stalled (1 while their accepted sends stay unsend and "
            "none moves on: routing leaves them alone; GoipdServerStalled fires), and recipients "
            "a server reported sent after goipd had failed them or moved them to another route "
            "(each got the SMS late, or twice; GoipdLateSends fires).",
            targets(
                (f"max by (server) (goipd_server_stalled{s}) > 0", "{{server}} stalled"),
                (
                    "sum by (server, after) (increase(goipd_late_sends_total"
                    f"{s}[$__rate_interval])) > 0",
                    "{{server}} late sends ({{after}})",
                ),
            ),
            minimum=0,
            overrides=[override("byFrameRefID", "B", **{"custom.drawStyle": "bars"})],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Inbox reads and recovered SMS",
            "Reads of each SMS Server's web inbox by result (ok, or why they failed: "
            "inbox_login, inbox_layout, timeout, ...; GoipdInboxUnreadable fires when all fail "
            "for 30 minutes), and inbound SMS found there that no push had delivered.",
            targets(
                (
                    "sum by (server, result) (increase(goipd_inbox_reads_total"
                    f"{s}[$__rate_interval])) > 0",
                    "{{server}} read {{result}}",
                ),
                (
                    "sum by (server) (increase(goipd_inbound_recovered_total"
                    f"{s}[$__rate_interval])) > 0",
                    "{{server}} recovered",
                ),
            ),
            bars=True,
            minimum=0,
        ),
        12,
        8,
    )

    lay.row("Queue and providers")
    lay.add(
        timeseries(
            "Queue depth by state",
            "Recipients in the ledger that are not final yet: queued (waiting for a line), "
            "dispatching (being sent) and submitted (sent, result not reported yet).",
            targets(
                (
                    'sum by (state) (goipd_queue_messages{state=~"queued|dispatching|submitted"})',
                    "{{state}}",
                )
            ),
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Oldest recipient waiting",
            "Age of the oldest recipient not yet sent; the red line is GoipdQueueOldestTooOld's "
            "threshold.",
            targets(("max(goipd_queue_oldest_age_seconds)", "oldest")),
            unit="s",
            minimum=0,
            threshold_line=900,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Provider balances",
            "Credit left at each cloud SMS provider, in the provider's own unit.",
            targets(("max by (provider) (goipd_provider_balance)", "{{provider}}")),
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Early provider reports and kept replies",
            "Delivery reports that came before goipd had recorded their send: held, then "
            "matched (applied), expired (10 min) or dropped (overflow); c123 replies fetched "
            "but refused by the ledger (their hours are fetched again once it takes writes); "
            "c123 replies recovered by fetching an hour again after a fetch whose answer was lost "
            "or whose replies were not stored; and hours of c123 replies given up after 3 failed "
            "fetches (GoipdCloudRepliesLost: replies of that hour may be lost).",
            targets(
                (
                    "sum by (provider, outcome) "
                    "(rate(goipd_cloud_reports_held_total[$__rate_interval])) > 0",
                    "{{provider}} report {{outcome}}",
                ),
                ("max by (provider) (goipd_cloud_replies_pending) > 0", "{{provider}} kept"),
                (
                    "sum by (provider) "
                    "(increase(goipd_cloud_replies_recovered_total[$__rate_interval])) > 0",
                    "{{provider}} recovered",
                ),
                (
                    "sum by (provider) "
                    "(increase(goipd_cloud_reply_hours_abandoned_total[$__rate_interval])) > 0",
                    "{{provider}} hours given up",
                ),
            ),
            minimum=0,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Background task crashes",
            "goipd loops (dispatch, forward, clouds, held_reports, maintenance, ha, watchdog) "
            "restarted after an unexpected exception; GoipdTaskCrashing fires on any. The "
            "traceback is in the log as event=task_crashed.",
            targets(
                (
                    "sum by (instance, task) (increase(goipd_task_restarts_total"
                    "[$__rate_interval])) > 0",
                    "{{instance}} {{task}}",
                )
            ),
            minimum=0,
        ),
        12,
        8,
    )

    lay.row("Polling")
    lay.add(
        timeseries(
            "Poll duration p99",
            "99th percentile of the querylines round trip to each SMS Server.",
            targets(
                (
                    "histogram_quantile(0.99, sum by (server, le) (rate("
                    f"goipd_server_poll_duration_seconds_bucket{s}[$__rate_interval])))",
                    "{{server}}",
                )
            ),
            unit="s",
            minimum=0,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Poll errors by reason",
            "Failed polls per second by server and reason, and polls skipped while a failing "
            "server is in backoff.",
            targets(
                (
                    "sum by (server, reason) (rate(goipd_server_poll_errors_total"
                    f"{s}[$__rate_interval])) > 0",
                    "{{server}} {{reason}}",
                ),
                (
                    "sum by (server) (rate(goipd_server_polls_skipped_total"
                    f"{s}[$__rate_interval])) > 0",
                    "{{server}} skipped (backoff)",
                ),
            ),
            unit="reqps",
            minimum=0,
        ),
        12,
        8,
    )

    lay.row("Status callbacks and validity")
    lay.add(
        timeseries(
            "Status callbacks pending per receiver",
            "Status events stored and not yet delivered, per receiver (scheme://host:port of the "
            "callers' status_url); the same on every instance sharing a ledger, hence max. "
            "Growing: the receiver is down or slower than its events "
            "(GoipdStatusCallbacksFailing).",
            targets(("max by (receiver) (goipd_status_callbacks_pending)", "{{receiver}}")),
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Status callbacks per second by result",
            "Status callback deliveries per receiver and result: delivered, retried (timeout, "
            "connection error or non-2xx answer; backed off), dropped_gone (410), given_up "
            "(callbacks.give_up_after), dropped_over_cap, unsigned (the caller's API token is "
            "gone), refused (a loopback or private address).",
            targets(
                (
                    "sum by (receiver, result) (rate(goipd_status_callbacks_total"
                    "[$__rate_interval])) > 0",
                    "{{receiver}} {{result}}",
                )
            ),
            unit="reqps",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Recipients expired unsent",
            "Recipients per second that expired before an upstream took them: validity (the "
            "message's expires_at or valid_for ended while it waited for a line) or "
            "max_queue_age (routing.max_queue_age). Steadily above zero: the fleet is too "
            "slow for what callers expect of it.",
            targets(
                (
                    "sum by (cause) (rate(goipd_recipients_expired_total[$__rate_interval])) > 0",
                    "{{cause}}",
                )
            ),
            unit="reqps",
            minimum=0,
        ),
        8,
        8,
    )

    return dashboard(
        FLEET_UID,
        "goipd fleet overview",
        "goipd: SMS Servers, lines, quotas, sending, queue and polling across the fleet.",
        [
            datasource_variable(),
            query_variable(
                "server",
                "SMS Server",
                "label_values(goipd_server_up, server)",
                multi=True,
                include_all=True,
            ),
        ],
        lay,
    )


# ---------------------------------------------------------------------------------------------
# Line detail


def line_detail() -> Json:
    sl_in = 'server="$server", line="$line"'
    sl = "{" + sl_in + "}"
    lay = Layout()

    online1 = f"(goipd_line_online{sl} == 1)"
    exhausted = f"(goipd_line_remaining_sms{sl} == 0 or goipd_line_day_remaining_sms{sl} == 0)"
    # One number per state, in the registry's order of precedence; the mappings name them.
    state = (
        f"0 * (goipd_line_online{sl} == 0)"
        f" or 1 * ({online1} and on (server, line) (goipd_line_registered{sl} == 0))"
        f" or 2 * ({online1} and on (server, line) (goipd_line_registered{sl} == 1)"
        f" and on (server, line) {exhausted})"
        f" or 3 * ({online1} and on (server, line) (goipd_line_registered{sl} == 1))"
    )
    state_map = value_mappings(
        (0, "offline", RED),
        (1, "logged out", ORANGE),
        (2, "quota exhausted", YELLOW),
        (3, "registered", GREEN),
    )
    # 2 healthy; 1 quarantined (online, registered, quota left, yet not healthy); 0 not usable
    # for another reason, which the state shows.
    quarantined = (
        f"((goipd_line_healthy{sl} == bool 0) * on (server, line) goipd_line_online{sl}"
        f" * on (server, line) goipd_line_registered{sl} unless on (server, line) {exhausted})"
        f" or on (server, line) 0 * goipd_line_healthy{sl}"
    )
    routing = f"2 * goipd_line_healthy{sl} + on (server, line) ({quarantined})"
    routing_map = value_mappings(
        (2, "healthy", GREEN), (1, "quarantined", RED), (0, "not usable", ORANGE)
    )
    on_off = value_mappings((1, "online", GREEN), (0, "offline", RED))
    reg_map = value_mappings((1, "registered", GREEN), (0, "not registered", ORANGE))

    lay.row("$server / $line now")
    lay.add(
        stat(
            "State",
            "The line's state as goipd computes it: offline, logged out (SIM not registered), "
            "quota exhausted, or registered.",
            targets((state, "state")),
            mappings=state_map,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Routing",
            "Whether routing uses the line: healthy, quarantined after repeated line errors, or "
            "not usable because of its state.",
            targets((routing, "routing")),
            mappings=routing_map,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Today's quota left",
            "SMS the line may still send today.",
            targets((quota_or_unlimited("goipd_line_day_remaining_sms", sl, "day"), "today")),
            mappings=UNLIMITED,
            steps=[(0, RED), (1, ORANGE), (20, GREEN)],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Total quota left",
            "SMS the line may still send before its total quota is used up.",
            targets((quota_or_unlimited("goipd_line_remaining_sms", sl, "total"), "total")),
            mappings=UNLIMITED,
            steps=[(0, RED), (1, ORANGE), (100, GREEN)],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Today's quota runs out in",
            "Today's quota left divided by its burn rate over the last 30 minutes; empty while "
            "the line is not sending.",
            targets(
                (
                    f"goipd_line_day_remaining_sms{sl}"
                    f" / (-deriv(goipd_line_day_remaining_sms{sl}[30m]) > 0)",
                    "exhaustion",
                )
            ),
            unit="s",
            base=RED,
            steps=[(3600, ORANGE), (4 * 3600, GREEN)],
            no_value="not burning",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Last online/reg change",
            "Time since the line's online or registration state last changed.",
            targets((f"time() - goipd_line_last_change_timestamp_seconds{sl}", "ago")),
            unit="s",
        ),
        4,
        4,
    )

    lay.row("History")
    lay.add(
        state_timeline(
            "State history",
            "Online, registration, derived state and routing over time.",
            targets(
                (f"goipd_line_online{sl}", "online"),
                (f"goipd_line_registered{sl}", "registered"),
                (state, "state"),
                (routing, "routing"),
            ),
            # Each row has its own meaning of 0/1/2/3.
            [
                override("byFrameRefID", "A", mappings=on_off),
                override("byFrameRefID", "B", mappings=reg_map),
                override("byFrameRefID", "C", mappings=state_map),
                override("byFrameRefID", "D", mappings=routing_map),
            ],
        ),
        24,
        7,
    )
    lay.add(
        timeseries(
            "Quota burn-down",
            "Today's and total quota left, and where today's quota will be an hour from now if "
            "it keeps burning at the rate of the last 30 minutes (below 0: it runs out within "
            "the hour).",
            targets(
                (f"goipd_line_day_remaining_sms{sl}", "today left"),
                (
                    f"predict_linear(goipd_line_day_remaining_sms{sl}[30m], 3600)",
                    "today left in 1h (projected)",
                ),
                (f"goipd_line_remaining_sms{sl}", "total left"),
            ),
            overrides=[
                override(
                    "byName",
                    "today left in 1h (projected)",
                    **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}},
                ),
                override("byName", "total left", **{"custom.axisPlacement": "right"}),
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Seconds until today's quota runs out",
            "The stat above over time: how long today's quota would last at the burn rate of "
            "the preceding 30 minutes.",
            targets(
                (
                    f"goipd_line_day_remaining_sms{sl}"
                    f" / (-deriv(goipd_line_day_remaining_sms{sl}[30m]) > 0)",
                    "time to exhaustion",
                )
            ),
            unit="s",
            minimum=0,
        ),
        12,
        8,
    )

    lay.row("Traffic")
    lay.add(
        timeseries(
            "Sends per minute by result",
            "Send results of this line, and delivery receipts.",
            targets(
                (
                    f"60 * sum by (result) (rate(goipd_sms_sent_total{sl}[$__rate_interval]))",
                    "{{result}}",
                ),
                (
                    f"60 * sum(rate(goipd_sms_delivered_total{sl}[$__rate_interval]))",
                    "delivered",
                ),
            ),
            minimum=0,
        ),
        12,
        8,
    )
    line_cms_rate = f"60 * sum by (code) (rate(goipd_cms_errors_total{sl}[$__rate_interval]))"
    lay.add(
        timeseries(
            "CMS errors per minute by code",
            "Failed sends of this line by CMS ERROR code and meaning.",
            targets((with_cms_meaning(line_cms_rate), "{{code}} {{meaning}}")),
            minimum=0,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "CMS error ratio (15m)",
            "CMS errors per reported send over 15 minutes, as GoipdLineCmsErrorRatioHigh "
            "computes it; the red line is its 20% threshold.",
            targets(
                (
                    f"sum(rate(goipd_cms_errors_total{sl}[15m])) / sum(rate(goipd_sms_sent_total"
                    f'{{route="goip", result=~"succeeded|failed", {sl_in}}}[15m]))',
                    "error ratio",
                )
            ),
            unit="percentunit",
            minimum=0,
            threshold_line=0.2,
        ),
        8,
        8,
    )
    line_top = f"sum by (code) (increase(goipd_cms_errors_total{sl}[$__range]))"
    lay.add(
        table(
            "CMS errors in the time range",
            "Failed sends of this line per CMS ERROR code in the selected time range.",
            [target(f"sort_desc({with_cms_meaning(line_top)})", ref="A", table=True)],
            columns={"code": "Code", "meaning": "Meaning", "Value": "Failed sends"},
            order=["code", "meaning", "Value"],
            sort_by=("Failed sends", True),
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Inbound SMS and state changes",
            "SMS received by this line, and its online/registration transitions.",
            targets(
                (f"sum(increase(goipd_inbound_sms_total{sl}[$__rate_interval]))", "inbound SMS"),
                (
                    "sum by (field) (increase(goipd_line_state_changes_total"
                    f"{sl}[$__rate_interval]))",
                    "{{field}} changes",
                ),
            ),
            bars=True,
            minimum=0,
        ),
        8,
        8,
    )

    lay.row("SIM")
    lay.add(
        timeseries(
            "Prepaid balance",
            "The SIM's prepaid balance as read by USSD on the balances schedule, and the low "
            "threshold of its balance check (GoipdLineBalanceLow below it). Gaps: no check "
            "applies to the line, or no read worked yet.",
            targets(
                (f"goipd_line_balance{sl}", "balance"),
                (f"goipd_line_balance_low_threshold{sl}", "low threshold"),
            ),
            overrides=[
                override(
                    "byName",
                    "low threshold",
                    **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}},
                )
            ],
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Balance reads failing and self-healing",
            "1 while the line's latest balance read failed (by reason); 1 while a reboot by "
            "remediation is waited for, and while one failed and the line is still down "
            "(GoipdLineRemediationFailed).",
            targets(
                (
                    f"max by (reason) (goipd_line_balance_read_failing{sl})",
                    "read failing: {{reason}}",
                ),
                (f"max(goipd_line_remediation_pending{sl})", "reboot pending"),
                (f"max(goipd_line_remediation_failed{sl})", "reboot failed"),
            ),
            minimum=0,
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Signal",
            "The line's GSM signal as its GoIP device's status page shows it, in dBm (2 x CSQ - "
            "113: -113 to -51), and the red line at -103 dBm (CSQ 5) below which "
            "GoipdLineSignalWeak fires after 30 minutes. Gaps: no device is configured for the "
            "line, the CSQ is 99 (unknown), or the device could not be polled for a while.",
            targets((f"max(goipd_line_signal_dbm{sl})", "signal")),
            unit="dBm",
            threshold_line=WEAK_SIGNAL_DBM,
        ),
        12,
        7,
    )
    lay.add(
        state_timeline(
            "SIM, module and network",
            "From the line's GoIP device port: a SIM in the slot or not (GoipdSimAbsent), the "
            "GSM module on or switched off, and the network (operator) the module is on.",
            targets(
                (f"max(goipd_line_sim_present{sl})", "SIM"),
                (f"max(goipd_line_module_on{sl})", "module"),
                (f"max by (operator) (goipd_line_operator_info{sl})", "network {{operator}}"),
            ),
            [
                override(
                    "byFrameRefID",
                    "A",
                    mappings=value_mappings((1, "present", GREEN), (0, "absent", RED)),
                ),
                override(
                    "byFrameRefID",
                    "B",
                    mappings=value_mappings((1, "on", GREEN), (0, "off", RED)),
                ),
                override("byFrameRefID", "C", mappings=value_mappings((1, "current", BLUE))),
            ],
        ),
        12,
        7,
    )

    lay.row("SMS Server $server")
    lay.add(
        stat(
            "Server reachable",
            "Whether the last poll of this line's SMS Server succeeded; when it did not, the "
            "line's gauges above are stale.",
            targets(('goipd_server_up{server="$server"}', "up")),
            mappings=value_mappings((1, "up", GREEN), (0, "unreachable", RED)),
        ),
        6,
        6,
    )
    lay.add(
        stat(
            "Engine",
            "Whether the SMS Server's engine sends: stalled while sends it accepted stay unsend "
            "and none moves on (the line may still read registered; routing leaves the server "
            "alone).",
            targets(('max(goipd_server_stalled{server="$server"})', "engine")),
            mappings=ENGINE,
        ),
        6,
        6,
    )
    lay.add(
        timeseries(
            "Poll duration p99 and errors",
            "querylines round trip to the SMS Server (p99) and its failed polls per second.",
            targets(
                (
                    "histogram_quantile(0.99, sum by (le) (rate("
                    'goipd_server_poll_duration_seconds_bucket{server="$server"}'
                    "[$__rate_interval])))",
                    "poll p99",
                ),
                (
                    'sum by (reason) (rate(goipd_server_poll_errors_total{server="$server"}'
                    "[$__rate_interval])) > 0",
                    "errors: {{reason}}",
                ),
            ),
            unit="s",
            minimum=0,
            overrides=[
                override(
                    "byFrameRefID",
                    "B",
                    unit="reqps",
                    **{"custom.axisPlacement": "right", "custom.drawStyle": "bars"},
                )
            ],
        ),
        12,
        6,
    )

    return dashboard(
        LINE_UID,
        "goipd line detail",
        "goipd: one line of one SMS Server — state history, quota burn-down, sends and errors.",
        [
            datasource_variable(),
            query_variable("server", "SMS Server", "label_values(goipd_line_online, server)"),
            query_variable(
                "line", "Line", 'label_values(goipd_line_online{server="$server"}, line)'
            ),
        ],
        lay,
    )


# ---------------------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "fleet-overview.json": fleet_overview,
    "line-detail.json": line_detail,
}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write to")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files in --out instead of writing"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path: Path = args.out / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run scripts/gen_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
