"""When a line is stuck enough to be rebooted, and when a rebooted one is back: online but unregistered since its last change for
`unregistered_for`, or quarantined after line errors for `quarantined_for`; never an offline
line (its device is away: a reboot cannot reach it), a gone one, or one an operator
quarantined."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from goipd.config import RemediationSettings
from goipd.fleet.actions import LineActions
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.fleet.remediation import Remediator, incident
from goipd.ledger.shared import AutoQuarantine
from goipd.metrics.catalog import Metrics
from goipd.sim.goip import RunningSimulator
from goipd.upstream.goip import LineStatus
from goipd.upstream.goip_commands import CommandClient
from tests.helpers.daemons import fleet_spec
from tests.helpers.ledgers import open_backend

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


async def test_a_quarantined_line_rebooted_quickly_is_back_though_querylines_never_changed(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    """The real engine notices a rebooting module only after 92 s without keepalives: a quick
    reboot of a line quarantined while registered shows no change at all. Registered at the
    end of recovery_wait, it is recovered and its quarantine released; not registered, failed."""
    sim = await simulator(fleet_spec(hq=[{"line_id": "G1"}]))
    registry = registry_with(True, "LOGIN", 100.0)
    registry.set_auto("hq", "G1", AutoQuarantine("hq", "G1", "CMS 331", "331", 200.0, 50_000.0))
    settings = RemediationSettings(
        enabled=True, quarantined_for="5m", recovery_wait="5m", cooldown="6h"
    )
    clock = [200.0 + 300]
    released: list[tuple[str, str]] = []

    async def release(server: str, line: str, now: float) -> bool:
        released.append((server, line))
        return registry.release_auto(server, line, now)

    commands = CommandClient("hq", sim.base_url("hq"), "root", SecretStr("pw-hq"))
    async with open_backend("sqlite", tmp_path) as ledger:
        remediator = Remediator(
            ledger,
            registry,
            LineActions(ledger, Metrics(), {"hq": commands}.get, lambda _server: None),
            lambda: settings,
            Metrics(),
            acts_on=lambda _server: True,
            release_quarantine=release,
            clock=lambda: clock[0],
        )
        try:
            await remediator.tick()
            await asyncio.gather(*remediator._reboots)
            assert registry.remediations[("hq", "G1")].result == "pending"
            clock[0] += 299
            await remediator.tick()
            assert registry.remediations[("hq", "G1")].result == "pending"
            clock[0] += 1
            await remediator.tick()
            assert registry.remediations[("hq", "G1")].result == "recovered"
            assert released == [("hq", "G1")]
        finally:
            await commands.close()
