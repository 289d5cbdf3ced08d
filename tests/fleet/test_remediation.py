"""When a line is stuck enough to be rebooted: online but unregistered since its last change for
`unregistered_for`, or quarantined after line errors for `quarantined_for`; never an offline
line (its device is away: a reboot cannot reach it), a gone one, or one an operator
quarantined."""

from __future__ import annotations

from goipd.config import RemediationSettings
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.fleet.remediation import incident
from goipd.ledger.shared import AutoQuarantine
from goipd.upstream.goip import LineStatus

SETTINGS = RemediationSettings(enabled=True, unregistered_for="10m", quarantined_for="5m")


def registry_with(online: bool, reg: str, at: float) -> LineRegistry:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [LineStatus("G1", True, True, "LOGIN", None, None)], 0.0)
    registry.apply_poll("hq", [LineStatus("G1", online, reg == "LOGIN", reg, None, None)], at)
    return registry


def test_an_unregistered_line_is_an_incident_once_it_lasted() -> None:
    registry = registry_with(True, "LOGOUT", 100.0)
    line = registry.line("hq", "G1")
    assert line is not None
    assert incident(line, registry, 100.0 + 599, SETTINGS) is None
    found = incident(line, registry, 100.0 + 600, SETTINGS)
    assert found is not None and (found.kind, found.since) == ("unregistered", 100.0)


def test_offline_registered_and_manually_quarantined_lines_are_left_alone() -> None:
    offline = registry_with(False, "LOGOUT", 100.0)
    line = offline.line("hq", "G1")
    assert line is not None and incident(line, offline, 10_000.0, SETTINGS) is None
    fine = registry_with(True, "LOGIN", 100.0)
    line = fine.line("hq", "G1")
    assert line is not None and incident(line, fine, 10_000.0, SETTINGS) is None
    stuck = registry_with(True, "LOGOUT", 100.0)
    stuck.set_manual("hq", "G1", ManualQuarantine("SIM swap", 50.0))
    line = stuck.line("hq", "G1")
    assert line is not None and incident(line, stuck, 10_000.0, SETTINGS) is None


def test_a_quarantine_after_line_errors_is_an_incident_once_it_lasted() -> None:
    registry = registry_with(True, "LOGIN", 100.0)
    registry.set_auto("hq", "G1", AutoQuarantine("hq", "G1", "CMS 331", "331", 200.0, 5000.0))
    line = registry.line("hq", "G1")
    assert line is not None
    assert incident(line, registry, 200.0 + 299, SETTINGS) is None
    found = incident(line, registry, 200.0 + 300, SETTINGS)
    assert found is not None and (found.kind, found.since) == ("quarantined", 200.0)
    # Ended: nothing to do.
    assert incident(line, registry, 5000.0, SETTINGS) is None
