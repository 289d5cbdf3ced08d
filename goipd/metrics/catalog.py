"""Every metric goipd exports, declared once (the names are a contract: docs/metrics-and-alerts.md);
the fleet's gauges are declared by their collector, goipd/fleet/collector.py.

A scrape of 32,000 lines is ~280,000 samples: render() writes them from text cached per server
and per labelled child (goipd/metrics/exposition.py), formatting only what changed since the last
scrape, and render_async() does it in slices so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from goipd.metrics.exposition import (
    OrderedRegistry,
    RegistryText,
    TextCollector,
    slow_text,
)
from goipd.upstream import cms
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import SETUP_FIXES

# `*_created` series double the series count of every counter and histogram for a timestamp
# nobody graphs: with 32,000 lines that is scrape time and Prometheus memory for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]


PROVIDER_OPERATIONS = ("send", "balance", "status", "inbound", "cancel")


RENDER_SLICE = 0.001


POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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


class Metrics:
    """One instance per daemon (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = OrderedRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._text_collectors: dict[int, TextCollector] = {}
        self._text = RegistryText(self.registry)
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
        self.status_callbacks = Counter(
            "goipd_status_callbacks",
            "Status callback deliveries by receiver (scheme://host:port) and result: delivered, "
            "retried, dropped_gone (410), given_up (callbacks.give_up_after), dropped_over_cap "
            "(callbacks.max_pending_per_receiver), unsigned (the caller's token is gone), "
            "refused (a private or loopback address at delivery).",
            ["receiver", "result"],
            registry=self.registry,
        )
        self.status_callbacks_pending = Gauge(
            "goipd_status_callbacks_pending",
            "Status callback events stored and not yet delivered, by receiver (the same on every "
            "instance sharing a ledger).",
            ["receiver"],
            registry=self.registry,
        )
        self.status_callback_duration = Histogram(
            "goipd_status_callback_duration_seconds",
            "Status callback POST round trip, answered or not (timeouts at callbacks.timeout).",
            buckets=POLL_BUCKETS,
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
        self.provider_errors = Counter(
            "goipd_provider_errors",
            "Failed calls to a cloud provider by operation (send, balance, status, inbound, "
            "cancel) and reason (timeout, connect, http_status, auth, parse).",
            ["provider", "operation", "reason"],
            registry=self.registry,
        )
        self.provider_sent_messages = Gauge(
            "goipd_provider_sent_messages",
            "Messages the provider account has sent in total, as the provider counts (c123).",
            ["provider"],
            registry=self.registry,
        )
        self.sms_undelivered = Counter(
            "goipd_sms_undelivered",
            "Cloud sends the provider reported as not delivered (expired, rejected, absent...).",
            ["route"],
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "goipd_queue_messages",
            "Recipients in the ledger by state.",
            ["state"],
            registry=self.registry,
        )
        self.balance_reads = Counter(
            "goipd_balance_reads",
            "Prepaid balance reads by USSD per SMS Server; result: ok, or why it failed "
            "(no_response, device_error, unknown_line, engine_down, balance_unreadable, auth, "
            "timeout, ...).",
            ["server", "result"],
            registry=self.registry,
        )
        self.line_actions = Counter(
            "goipd_line_actions",
            "Actions on a line through its SMS Server (reboot_module, reboot_device, ussd), by "
            "hand or by remediation; result: ok, or why it failed.",
            ["server", "action", "result"],
            registry=self.registry,
        )
        self.remediations = Counter(
            "goipd_line_remediations",
            "Self-healing of stuck lines: started (a module reboot), recovered (the line "
            "registered again), failed (it did not within remediation.recovery_wait), refused "
            "(the SMS Server did not take the reboot).",
            ["server", "result"],
            registry=self.registry,
        )
        self.device_polls = Counter(
            "goipd_device_polls",
            "Polls of a GoIP device's status.xml; result: ok, or why one failed (timeout, "
            "connect, disconnected, http_status, auth, parse).",
            ["server", "device", "result"],
            registry=self.registry,
        )
        self.recipients_expired = Counter(
            "goipd_recipients_expired",
            "Recipients that expired unsent; cause: validity (the message's expires_at or "
            "valid_for), max_queue_age (routing.max_queue_age).",
            ["cause"],
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "goipd_queue_oldest_age_seconds",
            "Age of the oldest recipient not yet sent (0 when none).",
            registry=self.registry,
        )
        self.push_reports = Counter(
            "goipd_push_reports",
            "Push reports received; outcome: ok, held (a provider report that came before its "
            "send was recorded, see goipd_cloud_reports_held_total), unknown_task, malformed, "
            "unauthorized.",
            ["source", "kind", "outcome"],
            registry=self.registry,
        )
        self.cloud_reports_held = Counter(
            "goipd_cloud_reports_held",
            "Provider delivery reports that came before goipd had recorded the send's message id, "
            "by what became of them: held (stored in the ledger, matched again), matched (applied "
            "later), expired (never matched within the hold time), overflow (dropped: too many "
            "held).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.task_restarts = Counter(
            "goipd_task_restarts",
            "Background tasks (dispatch, forwarding, provider jobs, maintenance...) restarted "
            "after they crashed with an unexpected exception.",
            ["task"],
            registry=self.registry,
        )
        self.cloud_replies_pending = Gauge(
            "goipd_cloud_replies_pending",
            "Replies of a provider's last poll (c123 removes them on fetch) that the ledger "
            "refused: their hours are fetched again (c123 time=) once it takes writes.",
            ["provider"],
            registry=self.registry,
        )
        self.cloud_replies_recovered = Counter(
            "goipd_cloud_replies_recovered",
            "Replies the ledger did not hold yet, found by fetching an hour of a provider's "
            "replies again (c123 time=) after a fetch whose answer was lost or whose replies "
            "were not stored: each would otherwise have been lost.",
            ["provider"],
            registry=self.registry,
        )
        self.cloud_reply_hours_abandoned = Counter(
            "goipd_cloud_reply_hours_abandoned",
            "Hours of a provider's replies (c123) planned to be fetched again and given up after "
            "3 failed fetches: the replies of that hour that goipd had not stored are lost.",
            ["provider"],
            registry=self.registry,
        )
        self.dispatch_ambiguous = Counter(
            "goipd_dispatch_ambiguous",
            "Recipients re-queued after a send whose fate is unknown (timeout, garbled reply, "
            "crash mid-call): each may be delivered twice.",
            registry=self.registry,
        )
        self.send_verifications = Counter(
            "goipd_send_verifications",
            "Recipients of GoIP sends whose answer was lost (timeout, connection cut, unreadable "
            "reply), by what querysms then showed: adopted (the server had created the task: "
            "not sent again) or requeued (no task found: sent again, counted ambiguous too).",
            ["server", "result"],
            registry=self.registry,
        )
        self.server_setup_problem = Gauge(
            "goipd_server_setup_problem",
            "1 while the SMS Server's replies show a setup problem: php_mbstring_missing (a "
            "PHP warning before every sendsms answer; parts are counted by bytes) or "
            "php_warning (another PHP warning).",
            ["server", "problem"],
            registry=self.registry,
        )
        self.late_sends = Counter(
            "goipd_late_sends",
            "Recipients an SMS Server reported sent after goipd had failed them (after=failed) "
            "or moved them to another route (after=moved): each reached the phone although "
            "goipd said otherwise, or twice.",
            ["server", "after"],
            registry=self.registry,
        )
        self.inbox_reads = Counter(
            "goipd_inbox_reads",
            "Reads of an SMS Server's web inbox, by result: ok, or why it failed (inbox_login: "
            "login refused; inbox_layout: a page goipd cannot read; timeout, connect, ...).",
            ["server", "result"],
            registry=self.registry,
        )
        self.inbound_recovered = Counter(
            "goipd_inbound_recovered",
            "Inbound SMS found in an SMS Server's web inbox that no push had delivered: each "
            "would otherwise have been lost.",
            ["server"],
            registry=self.registry,
        )
        self.instance_leader = Gauge(
            "goipd_instance_leader",
            "1 on the goipd instance that holds the server's polling lease (it polls the server "
            "and exports its fleet metrics), 0 on the others.",
            ["server"],
            registry=self.registry,
        )
        self.reconcile_queries = Counter(
            "goipd_reconcile_queries",
            "querysms calls made to recover lost push reports, by result.",
            ["server", "result"],
            registry=self.registry,
        )
        self.alert_notifications = Counter(
            "goipd_alertmanager_notifications",
            "Alertmanager notifications received, by receiver and outcome (sent, deduplicated, "
            'rate_limited, failed; unknown_receiver and malformed with receiver="").',
            ["receiver", "outcome"],
            registry=self.registry,
        )
        self.alert_recipients_rate_limited = Counter(
            "goipd_alertmanager_recipients_rate_limited",
            "Recipients left out of an alert SMS because of alerting.rate_limit.",
            ["receiver"],
            registry=self.registry,
        )
        self.registry.register(CmsInfoCollector())

    def register_text_collector(self, collector: TextCollector) -> None:
        """A collector that writes its own exposition text, faster than its samples would be
        formatted (the fleet's: goipd/fleet/collector.py)."""
        self.registry.register(collector)
        self._text_collectors[id(collector)] = collector

    def add_servers(self, names: Iterable[str]) -> None:
        """Start every server's error counters at 0 so rate() works from the first failure."""
        for name in names:
            for reason in ErrorReason:
                self.poll_errors.labels(name, reason.value)
            self.poll_skipped.labels(name)
            self.inbound_recovered.labels(name)
            for after in ("failed", "moved"):
                self.late_sends.labels(name, after)

    def remove_server(self, name: str) -> None:
        for reason in ErrorReason:
            _remove(self.poll_errors, name, reason.value)
        _remove(self.poll_duration, name)
        _remove(self.poll_skipped, name)
        _remove(self.instance_leader, name)
        for problem in SETUP_FIXES:
            _remove(self.server_setup_problem, name, problem)
        for result in ("ok", *ErrorReason):
            _remove(self.inbox_reads, name, str(result))
        _remove(self.inbound_recovered, name)
        for after in ("failed", "moved"):
            _remove(self.late_sends, name, after)

    def add_provider(self, name: str) -> None:
        """A configured provider: enabled, its error counters at 0 so rate() works."""
        self.provider_disabled.labels(name).set(0)
        for operation in PROVIDER_OPERATIONS:
            for reason in ErrorReason:
                self.provider_errors.labels(name, operation, reason.value)

    def remove_provider(self, name: str) -> None:
        _remove(self.provider_balance, name)
        _remove(self.provider_disabled, name)
        _remove(self.provider_sent_messages, name)
        _remove(self.cloud_replies_pending, name)
        _remove(self.cloud_replies_recovered, name)
        _remove(self.cloud_reply_hours_abandoned, name)
        for operation in PROVIDER_OPERATIONS:
            for reason in ErrorReason:
                _remove(self.provider_errors, name, operation, reason.value)

    def render(self) -> bytes:
        """The exposition text, as generate_latest(self.registry) writes it (family order
        aside), in one go."""
        return b"".join([part for part in self._parts() if part])

    async def render_async(self, slice_seconds: float = RENDER_SLICE) -> bytes:
        """render() on the event loop in slices of about `slice_seconds`: a scrape of a big
        fleet must not hold up API requests and pushes for its whole duration."""
        parts: list[bytes] = []
        deadline = time.perf_counter() + slice_seconds
        for part in self._parts():
            if part:
                parts.append(part)
            elif time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + slice_seconds
        return b"".join(parts)

    def _parts(self) -> Iterator[bytes | None]:
        for collector, text in self._text.render_parts():
            if text is not None:
                yield text.encode()
            elif id(collector) in self._text_collectors:
                yield from self._text_collectors[id(collector)].text_parts()
            else:
                yield slow_text(collector).encode()
            yield None


_M = TypeVar("_M", Counter, Gauge)


class LabelCache:
    """Children of labelled metrics by label values, for paths that hit the same series
    thousands of times a second (`labels()` validates and takes a lock on every call). Only
    for metrics whose children are never removed: a removed child would stay cached."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def get(self, metric: _M, *labels: str) -> _M:
        key = (id(metric), labels)
        child: _M | None = self._children.get(key)
        if child is None:
            if len(self._children) >= self._size:
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
