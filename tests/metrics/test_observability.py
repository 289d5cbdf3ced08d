"""Alert rules, dashboards and the metrics contract checked with the real `promtool`.

What breaks silently otherwise: a renamed metric leaves a dashboard panel empty and an alert that
can never fire; a PromQL typo in a panel shows up only when someone opens it; a hard-coded
data source UID breaks the import into another Grafana. promtool itself is the judge of PromQL
(no home-made parser), and the metric names are taken from docs/metrics-and-alerts.md, the
table that defines the contract. `make tools` (scripts/ensure-prometheus.sh) installs promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from goipd.upstream.goip_device import WEAK_SIGNAL_DBM
from tests.helpers.repo import REPO

ALERTS = REPO / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "prometheus" / "alerts_test.yml"
PROM_CONFIG = REPO / "prometheus" / "prometheus.example.yml"
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
DASHBOARD_FILES = ("fleet-overview.json", "line-detail.json")
GENERATOR = REPO / "scripts" / "gen_dashboards.py"
METRICS_DOC = REPO / "docs" / "metrics-and-alerts.md"
# The base comes from Prometheus' external label goipd_runbook_base (docs/metrics-and-alerts.md,
# "Runbook links"); without it the link is the repository path of the page.
RUNBOOK_URL = (
    "{{ with $externalLabels.goipd_runbook_base }}{{ . }}{{ else }}docs{{ end }}"
    "/metrics-and-alerts.md#alert-"
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed: run `make tools` (scripts/ensure-prometheus.sh)",
)

DS_OBJECT = {"type": "prometheus", "uid": "${datasource}"}

# Concrete values for Grafana's variables, so that dashboard queries become plain PromQL.
GRAFANA_VARIABLES = {
    "server": "hq",
    "line": "G101",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES_RE = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)$", re.S)
METRIC_RE = re.compile(r"\bgoipd_[A-Za-z0-9_]+")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# helpers


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def load_dashboards() -> dict[str, Json]:
    return {
        name: json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
        for name in DASHBOARD_FILES
    }


def walk_panels(panels: list[Json]) -> Iterator[Json]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def concrete(expr: str) -> str:
    """The query with Grafana's variables replaced by concrete values."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return VARIABLE_RE.sub(replace, expr)


def dashboard_queries(dashboard: Json) -> list[tuple[str, str]]:
    """(where, PromQL with Grafana variables) for every panel target and query variable."""
    found: list[tuple[str, str]] = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} query {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES_RE.match(text.strip())
        # label_values(selector, label) is Grafana's, not PromQL: promtool checks the selector.
        assert match, f"variable {variable['name']}: unexpected query {text!r}"
        found.append((f"variable {variable['name']}", match["selector"]))
    return found


def alert_rules() -> list[Json]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def exported_metrics() -> dict[str, str]:
    """name → type, from the metrics table of docs/metrics-and-alerts.md (the contract), plus
    Prometheus' `up`."""
    metrics = {"up": "gauge"}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `goipd_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            name = cells[0].strip("`").split("{")[0]
            metrics[name] = cells[1]
    return metrics


def metric_names(expr: str) -> set[str]:
    # Strings first: label values and label_replace replacements are not metric names.
    return set(METRIC_RE.findall(STRING_RE.sub('""', expr)))


def datasource_values(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_values(item)


def panel_by_title(dashboard: Json, title: str) -> Json:
    for panel in walk_panels(dashboard["panels"]):
        if panel["title"] == title:
            return panel
    raise AssertionError(f"no panel {title!r} in dashboard {dashboard['uid']}")


# --------------------------------------------------------------------------------------------
# alert rules


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    assert_ok(promtool("check", "rules", str(ALERTS)))


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    assert_ok(promtool("test", "rules", str(ALERTS_TEST)))


@needs_promtool
def test_example_prometheus_config_is_valid() -> None:
    # Also loads the rule files the config names, relative to the config file.
    assert_ok(promtool("check", "config", str(PROM_CONFIG)))


def test_every_alert_has_a_firing_and_a_silent_test_case() -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    fires: set[str] = set()
    silent: set[str] = set()
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts without a case where they fire"
    assert names - silent == set(), "alerts without a case where they stay silent"
    assert (fires | silent) - names == set(), "test cases for alerts that do not exist"


def test_alerts_carry_severity_summary_description_and_runbook() -> None:
    # Which labels each alert's series carry, taken from its firing test cases.
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    labels: dict[str, set[str]] = {}
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                labels.setdefault(case["alertname"], set()).update(alert["exp_labels"])
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == RUNBOOK_URL + name.lower(), name
        # An alert about a line or server says which one.
        for label in ("server", "line"):
            if label in labels.get(name, set()):
                assert f"$labels.{label}" in annotations["description"], (name, label)


def test_every_runbook_anchor_has_a_section() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} Alert: (\w+)\s*$", text, re.M))
    missing = {rule["alert"] for rule in alert_rules()} - headings
    assert not missing, f"no '### Alert: NAME' section (the runbook_url anchor) for {missing}"
    # The anchor each runbook_url ends in must be one GitHub derives from a heading of the page:
    # lower case, punctuation dropped, spaces to hyphens ("Alert: GoipdDown" → alert-goipddown).
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)
    }
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no heading of {METRICS_DOC.name} is #{anchor}"


# --------------------------------------------------------------------------------------------
# dashboards


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules: list[Json] = []
    where: list[str] = []
    for file, dashboard in load_dashboards().items():
        for place, expr in dashboard_queries(dashboard):
            where.append(f"{file}: {place}")
            rules.append({"record": f"dashboard_check:expr_{len(rules)}", "expr": concrete(expr)})
    assert len(rules) > 20
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", "--lint=none", str(path))
    # promtool names the failing rule by its record name; map it back to the panel.
    failing = sorted({int(i) for i in re.findall(r"dashboard_check:expr_(\d+)", result.stderr)})
    places = "\n".join(f"expr_{i} is {where[i]}" for i in failing)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{places}"


def test_metric_names_are_in_the_contract() -> None:
    exported = exported_metrics()
    assert len(exported) > 20, "metrics table of docs/metrics-and-alerts.md not found"
    used: dict[str, set[str]] = {}
    for file, dashboard in load_dashboards().items():
        for place, expr in dashboard_queries(dashboard):
            for name in metric_names(expr):
                used.setdefault(name, set()).add(f"{file}: {place}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yml: {rule['alert']}")
    unknown = {}
    for name, places in used.items():
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            stripped = name.removesuffix(suffix)
            if stripped != name and exported.get(stripped) == "histogram":
                base = stripped
        if base not in exported:
            unknown[name] = sorted(places)
    assert not unknown, f"metrics not in the metrics table of the docs: {unknown}"


def test_dashboards_use_the_datasource_variable() -> None:
    for file, dashboard in load_dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", file
        assert variables["datasource"]["query"] == "prometheus", file
        values = list(datasource_values(dashboard))
        assert values, file
        for value in values:
            # No UID of some particular Grafana: only the variable, as object or string.
            assert value == DS_OBJECT or value in {"${datasource}", "$datasource"}, (file, value)
        for panel in walk_panels(dashboard["panels"]):
            if panel["type"] != "row":
                assert panel.get("datasource") == DS_OBJECT, (file, panel["title"])
            for target in panel.get("targets", []):
                assert target.get("datasource") == DS_OBJECT, (file, panel["title"])


def test_dashboards_have_fixed_uids_and_unique_panel_ids() -> None:
    dashboards = load_dashboards()
    assert dashboards["fleet-overview.json"]["uid"] == "goipd-fleet"
    assert dashboards["line-detail.json"]["uid"] == "goipd-line"
    for file, dashboard in dashboards.items():
        assert 36 <= dashboard["schemaVersion"] <= 41, file
        ids = [panel["id"] for panel in walk_panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), file
    line_vars = {v["name"]: v for v in dashboards["line-detail.json"]["templating"]["list"]}
    assert line_vars["server"]["definition"] == "label_values(goipd_line_online, server)"
    assert (
        line_vars["line"]["definition"] == 'label_values(goipd_line_online{server="$server"}, line)'
    )


def test_every_panel_is_described_in_the_docs() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8")
    missing = [
        f"{file}: {panel['title']}"
        for file, dashboard in load_dashboards().items()
        for panel in walk_panels(dashboard["panels"])
        if panel["type"] != "row" and f"**{panel['title']}**" not in text
    ]
    assert not missing, f"panels without a description in {METRICS_DOC.name}: {missing}"


def test_generator_reproduces_the_committed_dashboards(tmp_path: Path) -> None:
    if not GENERATOR.exists():
        pytest.skip("dashboards are not generated")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, timeout=60)
    for name in DASHBOARD_FILES:
        assert (tmp_path / name).read_bytes() == (DASHBOARD_DIR / name).read_bytes(), (
            f"{name} differs from the generator's output: run scripts/gen_dashboards.py"
        )


@needs_promtool
def test_dashboard_queries_compute_line_states(tmp_path: Path) -> None:
    """The derived panels (state of a line, lines by state, routing, CMS meanings) give the
    right numbers on a small fleet: promtool evaluates the dashboards' own queries."""
    dashboards = load_dashboards()
    fleet, line = dashboards["fleet-overview.json"], dashboards["line-detail.json"]

    def exprs(dashboard: Json, title: str) -> dict[str, str]:
        panel = panel_by_title(dashboard, title)
        return {t["legendFormat"]: concrete(t["expr"]) for t in panel["targets"]}

    by_state = exprs(fleet, "Lines by state")
    state = exprs(line, "State")["state"]
    routing = exprs(line, "Routing")["routing"]
    today = exprs(line, "Today's quota left")["today"]
    top_cms = concrete(
        panel_by_title(fleet, "Top CMS error codes in the time range")["targets"][0]["expr"]
    )

    # hq: G101 registered with quota; G102 logged out; G103 offline; G104 day quota used up;
    # G105 quarantined (usable by its gauges, not healthy); G106 unlimited quotas.
    lines = {
        "G101": (1, 1, 1, "500", "40"),
        "G102": (1, 0, 0, "500", "40"),
        "G103": (0, 0, 0, "500", "40"),
        "G104": (1, 1, 0, "500", "0"),
        "G105": (1, 1, 0, "500", "40"),
        "G106": (1, 1, 1, None, None),
    }
    series: list[Json] = []
    for line_id, (online, registered, healthy, total, day) in lines.items():
        labels = f'server="hq", line="{line_id}"'
        series += [
            {"series": f"goipd_line_online{{{labels}}}", "values": f"{online}x5"},
            {"series": f"goipd_line_registered{{{labels}}}", "values": f"{registered}x5"},
            {"series": f"goipd_line_healthy{{{labels}}}", "values": f"{healthy}x5"},
        ]
        for metric, quota, value in (
            ("goipd_line_remaining_sms", "total", total),
            ("goipd_line_day_remaining_sms", "day", day),
        ):
            if value is not None:
                series.append({"series": f"{metric}{{{labels}}}", "values": f"{value}x5"})
            unlimited = 1 if value is None else 0
            series.append(
                {
                    "series": f'goipd_line_unlimited{{{labels}, quota="{quota}"}}',
                    "values": f"{unlimited}x5",
                }
            )
    series += [
        {
            "series": 'goipd_cms_errors_total{server="hq", line="G101", code="17"}',
            "values": "0+2x5",
        },
        {
            "series": 'goipd_cms_errors_total{server="hq", line="G101", code="none"}',
            "values": "0+1x5",
        },
        {"series": 'goipd_cms_error_info{code="17", meaning="Network failure"}', "values": "1x5"},
        {"series": 'goipd_cms_error_info{code="1", meaning="Unassigned number"}', "values": "1x5"},
    ]

    def on_line(line_id: str, expr: str) -> str:
        return expr.replace('line="G101"', f'line="{line_id}"')

    tests: list[Json] = [
        {"expr": by_state["registered"], "exp_samples": [{"labels": "{}", "value": 3}]},
        {"expr": by_state["logged out"], "exp_samples": [{"labels": "{}", "value": 1}]},
        {"expr": by_state["offline"], "exp_samples": [{"labels": "{}", "value": 1}]},
        {"expr": by_state["quota exhausted"], "exp_samples": [{"labels": "{}", "value": 1}]},
        {
            "expr": top_cms,
            "exp_samples": [
                {"labels": '{code="17", meaning="Network failure"}', "value": 10},
                {"labels": '{code="none", meaning="not in the CMS ERROR table"}', "value": 5},
            ],
        },
    ]
    expected = {
        # line: (state, routing, today's quota shown)
        "G101": (3, 2, 40),
        "G102": (1, 0, 40),
        "G103": (0, 0, 40),
        "G104": (2, 0, 0),
        "G105": (3, 1, 40),
        "G106": (3, 2, -1),
    }
    for line_id, (want_state, want_routing, want_today) in expected.items():
        labels = f'{{server="hq", line="{line_id}"}}'
        tests += [
            {
                "expr": on_line(line_id, state),
                "exp_samples": [{"labels": labels, "value": want_state}],
            },
            {
                "expr": on_line(line_id, routing),
                "exp_samples": [{"labels": labels, "value": want_routing}],
            },
            {
                "expr": on_line(line_id, today),
                "exp_samples": [{"labels": labels, "value": want_today}],
            },
        ]
    for test in tests:
        test["eval_time"] = "5m"
    document = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert_ok(promtool("test", "rules", str(path)))


def test_the_weak_signal_alert_has_the_apis_threshold() -> None:
    """GoipdLineSignalWeak fires where the API, the CLI and the status page say WEAK."""
    [rule] = [r for r in alert_rules() if r["alert"] == "GoipdLineSignalWeak"]
    found = re.search(r"goipd_line_signal_dbm\)\s*<=\s*(-\d+)", rule["expr"])
    assert found is not None, rule["expr"]
    assert int(found.group(1)) == WEAK_SIGNAL_DBM
