"""The gauges of what goipd learns of SIMs and does to them besides querylines: prepaid
balances read by USSD (goipd/fleet/balances.py), remediations of stuck lines
(goipd/fleet/remediation.py), and signal, operator, SIM and module as the GoIP devices show
them (goipd/fleet/devices.py), read from the line registry at scrape time.

Only lines a balance check applies to, with a remediation under way or failed, or on a
configured device port have these series; they are exported by the instance that polls the
line's server, as the fleet gauges are (goipd/fleet/collector.py). A device's readings are
exported only while fresh (goipd/fleet/devices.py): one nobody has seen for a while is absent,
not a stale value alerts would act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from goipd.fleet.registry import LineRegistry


class UpkeepCollector(Collector):
    def __init__(self, fleet: LineRegistry, clock: Callable[[], float] = time.time) -> None:
        self.fleet = fleet
        self.clock = clock

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
        yield from self._devices()

    def _devices(self) -> Iterator[Metric]:
        dbm = _gauge(
            "goipd_line_signal_dbm",
            "The line's GSM signal as its GoIP device shows it, in dBm (2 x CSQ - 113); absent "
            "while the CSQ is 99 (unknown) or the device's readings are stale.",
        )
        csq = _gauge(
            "goipd_line_signal_csq", "The line's GSM signal as its GoIP device shows it: CSQ 0-31."
        )
        sim = _gauge(
            "goipd_line_sim_present",
            "1 while the line's device port shows a SIM in the slot, else 0.",
        )
        module = _gauge(
            "goipd_line_module_on",
            "1 while the GSM module of the line's device port is on, else 0.",
        )
        operator = GaugeMetricFamily(
            "goipd_line_operator_info",
            "Always 1: the network the line's GSM module is on, as its GoIP device shows it.",
            labels=["server", "line", "operator"],
        )
        device_up = GaugeMetricFamily(
            "goipd_device_up",
            "1 if the latest poll of the GoIP device's status.xml worked, else 0.",
            labels=["server", "device"],
        )
        now = self.clock()
        polls: dict[tuple[str, str], bool] = {}
        for (server, line), found in sorted(self.fleet.devices.items()):
            state = self.fleet.servers.get(server)
            if state is None or not state.owned:
                continue
            if found.poll.ok is not None:
                polls[(server, found.device)] = bool(found.poll.ok)
            if not self._exported(server, line) or not found.fresh(now):
                continue
            labels = [server, line]
            if found.csq is not None and found.signal_dbm is not None:
                dbm.add_metric(labels, float(found.signal_dbm))
                csq.add_metric(labels, float(found.csq))
            if found.sim_present is not None:
                sim.add_metric(labels, 1.0 if found.sim_present else 0.0)
            if found.module_on is not None:
                module.add_metric(labels, 1.0 if found.module_on else 0.0)
            if found.operator:
                operator.add_metric([*labels, found.operator], 1.0)
        for (server, device), ok in sorted(polls.items()):
            device_up.add_metric([server, device], 1.0 if ok else 0.0)
        yield from (dbm, csq, sim, module, operator, device_up)

    def _exported(self, server: str, line: str) -> bool:
        state = self.fleet.servers.get(server)
        if state is None or not state.owned:
            return False
        found = state.lines.get(line)
        return found is not None and not found.gone


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["server", "line"])
