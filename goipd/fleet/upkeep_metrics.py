"""The gauges of what goipd learns of SIMs and does to them besides querylines: prepaid
balances read by USSD (goipd/fleet/balances.py) and remediations of stuck lines
(goipd/fleet/remediation.py), read from the line registry at scrape time.

Only lines a balance check applies to, or with a remediation under way or failed, have these
series, so they are few; they are exported by the instance that polls the line's server, as the
fleet gauges are (goipd/fleet/collector.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from goipd.fleet.registry import LineRegistry


class UpkeepCollector(Collector):
    def __init__(self, fleet: LineRegistry) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        balance = _gauge(
            "goipd_line_balance",
            "The line's last prepaid balance read by USSD, in the carrier's currency.",
        )
        read_at = _gauge(
            "goipd_line_balance_timestamp_seconds", "When the line's last balance was read."
        )
        threshold = _gauge(
            "goipd_line_balance_low_threshold",
            "The balance below which the line's balance is low (balances.checks[].low).",
        )
        failing = GaugeMetricFamily(
            "goipd_line_balance_read_failing",
            "1 while the line's latest balance read failed (after its last good one), with "
            "why: no_response, device_error, unknown_line, engine_down, balance_unreadable, "
            "auth, timeout, ...",
            labels=["server", "line", "reason"],
        )
        for (server, line), found in sorted(self.fleet.balances.items()):
            if not self._exported(server, line):
                continue
            labels = [server, line]
            if found.balance is not None and found.read_at is not None:
                balance.add_metric(labels, found.balance)
                read_at.add_metric(labels, found.read_at)
            if found.error_at is not None and (
                found.read_at is None or found.error_at > found.read_at
            ):
                failing.add_metric([*labels, found.error_reason or "unknown"], 1.0)
        for (server, line), low in sorted(self.fleet.balance_thresholds.items()):
            if self._exported(server, line):
                threshold.add_metric([server, line], low)
        remediating = _gauge(
            "goipd_line_remediation_pending",
            "1 while the line's module was rebooted by remediation and it is waited for.",
        )
        remediation_failed = _gauge(
            "goipd_line_remediation_failed",
            "1 while the line's last remediation failed (it did not register again after the "
            "reboot, or the reboot was refused) and the line is still not registered.",
        )
        for (server, line), remediation in sorted(self.fleet.remediations.items()):
            state = self.fleet.line(server, line)
            if not self._exported(server, line) or state is None:
                continue
            if remediation.result == "pending":
                remediating.add_metric([server, line], 1.0)
            elif remediation.result in ("failed", "refused") and not (
                state.online and state.registered and state.last_change > remediation.started_at
            ):
                remediation_failed.add_metric([server, line], 1.0)
        yield from (balance, read_at, threshold, failing, remediating, remediation_failed)

    def _exported(self, server: str, line: str) -> bool:
        state = self.fleet.servers.get(server)
        if state is None or not state.owned:
            return False
        found = state.lines.get(line)
        return found is not None and not found.gone


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["server", "line"])
