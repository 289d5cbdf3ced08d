"""Every metric goipd exports, declared once (names are a contract: ARCHITECTURE.md §2).

Fleet gauges are not stored in prometheus_client children: they are read from the line registry
at scrape time. That keeps polling cheap (no metric updates per line per poll) and makes series
of gone lines and removed servers disappear by construction.

A scrape of 32,000 lines is ~280,000 samples: render() writes them from text cached per server
and per labelled child (goipd/metrics/exposition.py), formatting only what changed since the last
scrape, and render_async() does it in slices so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from goipd.fleet.registry import LineRegistry, ServerState
from goipd.metrics.exposition import (
    OrderedRegistry,
    RegistryText,
    count_text,
    escape_label,
    go_float,
    header,
    slow_text,
)
from goipd.upstream import cms
from goipd.upstream.errors import ErrorReason

# `*_created` series double the series count of every counter and histogram for a timestamp
# nobody graphs: with 32,000 lines that is scrape time and Prometheus memory for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

PROVIDER_OPERATIONS = ("send", "balance", "status", "inbound", "cancel")
RENDER_SLICE = 0.001
POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FleetCollector(Collector):
    def __init__(self, fleet: LineRegistry) -> None:
        self.fleet = fleet
        self._servers: dict[str, _ServerText] = {}
        self._headers: tuple[bytes, ...] | None = None

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
    if len(heads) != len(_GONE) + 1:
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
    if old is not None and old.up == server.up and old.values == values:
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
    blocks = tuple(
        block.encode()
        for block in (up, *("".join([text[i] for text in texts]) for i in range(len(_GONE))))
    )
    return _ServerText(server.up, values, lines, blocks)


_GONE = ("",) * 9


def _line_text(
    server_label: str, value: tuple[Any, ...], healthy: bool, stamps: dict[float, str]
) -> tuple[str, ...]:
    """One line's samples of each per-line family (after goipd_server_up), as generate_latest
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
        self.registry = OrderedRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.fleet_collector = FleetCollector(fleet)
        self.registry.register(self.fleet_collector)
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
            "by what became of them: held (kept in memory to be matched again), matched (applied "
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
            "Replies fetched from a provider (c123 removes them on fetch) that could not be "
            "stored yet and are kept in memory to be stored first on the next poll.",
            ["provider"],
            registry=self.registry,
        )
        self.cloud_replies_recovered = Counter(
            "goipd_cloud_replies_recovered",
            "Replies the ledger did not hold yet, found by fetching an hour of a provider's "
            "replies again (c123 time=) after a fetch whose answer was lost: each would "
            "otherwise have been lost.",
            ["provider"],
            registry=self.registry,
        )
        self.dispatch_ambiguous = Counter(
            "goipd_dispatch_ambiguous",
            "Recipients re-queued after a send whose fate is unknown (timeout, garbled reply, "
            "crash mid-call): each may be delivered twice.",
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
        _remove(self.instance_leader, name)

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
            elif collector is self.fleet_collector:
                yield from self.fleet_collector.text_parts()
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
