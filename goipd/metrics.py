"""Every metric goipd exports, declared once (names are a contract: ARCHITECTURE.md §2).

Fleet gauges are not stored in prometheus_client children: they are read from the line registry
at scrape time. That keeps polling cheap (no metric updates per line per poll) and makes series
of gone lines and removed servers disappear by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from goipd import cms
from goipd.fleet.registry import LineRegistry
from goipd.upstream.errors import ErrorReason

# `*_created` series double the series count of every counter and histogram for a timestamp
# nobody graphs: with 32,000 lines that is scrape time and Prometheus memory for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FleetCollector(Collector):
    def __init__(self, fleet: LineRegistry) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "goipd_server_up",
            "Last poll of this SMS Server succeeded (1) or failed (0).",
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
        for server in self.fleet.servers.values():
            up.add_metric([server.name], 1.0 if server.up else 0.0)
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
        yield from (
            up,
            online,
            registered,
            remaining,
            day_remaining,
            unlimited,
            changes,
            last_change,
            healthy,
        )


class CmsInfoCollector(Collector):
    """goipd_cms_error_info{code,meaning} = 1: the CMS table, for joins in dashboards."""

    def __init__(self) -> None:
        family = GaugeMetricFamily(
            "goipd_cms_error_info",
            "CMS ERROR codes and their meanings (always 1).",
            labels=["code", "meaning"],
        )
        for code in cms.all_codes():
            family.add_metric([str(code.code), code.meaning], 1.0)
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["server", "line"])


class Metrics:
    """One instance per daemon (tests run several in one process)."""

    def __init__(self, fleet: LineRegistry) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(FleetCollector(fleet))
        self.poll_duration = Histogram(
            "goipd_server_poll_duration_seconds",
            "querylines round trip to the SMS Server, successful or not.",
            ["server"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.poll_errors = Counter(
            "goipd_server_poll_errors",
            "Failed polls of an SMS Server by reason (timeout, http_status, auth, parse, connect).",
            ["server", "reason"],
            registry=self.registry,
        )
        self.poll_skipped = Counter(
            "goipd_server_polls_skipped",
            "Scheduled polls skipped because the server is in failure backoff.",
            ["server"],
            registry=self.registry,
        )

        self.messages_accepted = Counter(
            "goipd_messages_accepted", "Recipients accepted by the API.", registry=self.registry
        )
        self.sms_sent = Counter(
            "goipd_sms_sent",
            "Send results by route: succeeded, failed (upstream report) or rejected (refused).",
            ["route", "server", "line", "result"],
            registry=self.registry,
        )
        self.sms_delivered = Counter(
            "goipd_sms_delivered",
            "Delivery receipts.",
            ["route", "server", "line"],
            registry=self.registry,
        )
        self.cms_errors = Counter(
            "goipd_cms_errors",
            "Failed sends by CMS error code.",
            ["server", "line", "code"],
            registry=self.registry,
        )
        self.inbound_sms = Counter(
            "goipd_inbound_sms",
            "SMS received by a line.",
            ["server", "line"],
            registry=self.registry,
        )
        self.provider_balance = Gauge(
            "goipd_provider_balance",
            "Cloud provider credit left.",
            ["provider"],
            registry=self.registry,
        )
        self.provider_disabled = Gauge(
            "goipd_provider_disabled",
            "1 while a cloud provider is taken out of routing (auth failed, no credit, account "
            "frozen); a config reload puts it back.",
            ["provider"],
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "goipd_queue_messages",
            "Recipients in the ledger by state.",
            ["state"],
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "goipd_queue_oldest_age_seconds",
            "Age of the oldest recipient not yet sent (0 when none).",
            registry=self.registry,
        )
        self.push_reports = Counter(
            "goipd_push_reports",
            "Push reports received; outcome: ok, unknown_task, malformed, unauthorized.",
            ["source", "kind", "outcome"],
            registry=self.registry,
        )
        self.dispatch_ambiguous = Counter(
            "goipd_dispatch_ambiguous",
            "Recipients re-queued after a send whose fate is unknown (timeout, garbled reply, "
            "crash mid-call): each may be delivered twice.",
            registry=self.registry,
        )
        self.reconcile_queries = Counter(
            "goipd_reconcile_queries",
            "querysms calls made to recover lost push reports, by result.",
            ["server", "result"],
            registry=self.registry,
        )
        self.registry.register(CmsInfoCollector())

    def add_servers(self, names: Iterable[str]) -> None:
        """Start every server's error counters at 0 so rate() works from the first failure."""
        for name in names:
            for reason in ErrorReason:
                self.poll_errors.labels(name, reason.value)
            self.poll_skipped.labels(name)

    def remove_server(self, name: str) -> None:
        for reason in ErrorReason:
            _remove(self.poll_errors, name, reason.value)
        _remove(self.poll_duration, name)
        _remove(self.poll_skipped, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
