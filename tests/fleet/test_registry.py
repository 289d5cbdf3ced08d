"""Every line transition is exactly one structlog event; gone lines are marked, not kept; manual
quarantines wait for their line and outlive its disappearance, and a release ends an automatic
one early."""

from __future__ import annotations

import structlog

from goipd.fleet import snapshot
from goipd.fleet.registry import LineRegistry, LineState, ManualQuarantine
from goipd.ledger.shared import AutoQuarantine
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus


def status(
    line: str, online: bool = True, reg: str = "LOGIN", day: int | None = None
) -> LineStatus:
    return LineStatus(line, online, reg == "LOGIN", reg, None, day)


def events_of(
    registry: LineRegistry, statuses: list[LineStatus], now: float
) -> list[tuple[str, str | None]]:
    with structlog.testing.capture_logs() as logs:
        registry.apply_poll("hq", statuses, now)
    return [(entry["event"], entry.get("line")) for entry in logs]


def test_each_transition_is_one_event() -> None:
    registry = LineRegistry(["hq"])
    assert events_of(registry, [status("G1"), status("G2", day=5)], 1.0) == [
        ("server_reached", None),
        ("line_appeared", "G1"),
        ("line_appeared", "G2"),
    ]
    assert events_of(registry, [status("G1"), status("G2", day=5)], 2.0) == []
    assert events_of(registry, [status("G1", reg="LOGOUT"), status("G2", day=0)], 3.0) == [
        ("sim_logged_out", "G1"),
        ("quota_exhausted", "G2"),
    ]
    assert events_of(registry, [status("G1", online=False, reg=""), status("G2", day=9)], 4.0) == [
        ("line_disconnected", "G1"),
        ("quota_restored", "G2"),
    ]
    assert events_of(registry, [status("G1")], 5.0) == [
        ("line_connected", "G1"),
        ("sim_logged_in", "G1"),
        ("line_disappeared", "G2"),
    ]
    g2 = registry.line("hq", "G2")
    assert g2 is not None and g2.state is LineState.GONE
    assert events_of(registry, [status("G1"), status("G2")], 6.0) == [("line_reappeared", "G2")]
    g1 = registry.line("hq", "G1")
    assert g1 is not None
    assert (g1.online_changes, g1.reg_changes, g1.last_change, g1.first_seen) == (2, 2, 5.0, 1.0)


def test_server_failures_and_recovery_are_one_event_each() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], 1.0)
    with structlog.testing.capture_logs() as logs:
        registry.apply_failure("hq", ErrorReason.TIMEOUT, "querylines: no reply", 2.0)
        registry.apply_failure("hq", ErrorReason.TIMEOUT, "querylines: no reply", 3.0)
        registry.apply_poll("hq", [status("G1")], 4.0)
    assert [entry["event"] for entry in logs] == ["server_down", "server_recovered"]
    assert registry.servers["hq"].consecutive_failures == 0


def test_quarantine_after_consecutive_line_errors() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], 1.0)
    kwargs = {"code": "331", "threshold": 3, "cooldown": 60.0, "now": 10.0}
    assert not registry.note_send_result("hq", "G1", line_error=True, **kwargs)  # type: ignore[arg-type]
    assert not registry.note_send_result("hq", "G1", line_error=False, **kwargs)  # type: ignore[arg-type]
    results = [
        registry.note_send_result("hq", "G1", line_error=True, **kwargs)  # type: ignore[arg-type]
        for _ in range(3)
    ]
    assert results == [False, False, True]
    line = registry.line("hq", "G1")
    assert line is not None and line.quarantined(10.0) and not line.quarantined(70.0)
    assert line.quarantine_reason == "3 line errors in a row (CMS 331)"


NOW = 1_800_000_000.0


# --- manual quarantines --------------------------------------------------------------------------


def test_manual_quarantine_waits_for_its_line_and_survives_a_disappearance() -> None:
    registry = LineRegistry(["hq"])
    registry.set_manual("hq", "G2", ManualQuarantine("broken SIM", NOW))
    registry.apply_poll("hq", [status("G1"), status("G2")], NOW)
    g1, g2 = registry.line("hq", "G1"), registry.line("hq", "G2")
    assert g1 is not None and g2 is not None
    assert g2.quarantined(NOW) and not g2.healthy and not g2.auto_quarantined(NOW)
    assert not g1.quarantined(NOW) and g1.healthy
    registry.apply_poll("hq", [status("G1")], NOW + 1)  # G2 is gone...
    registry.apply_poll("hq", [status("G1"), status("G2")], NOW + 2)  # ...and back
    again = registry.line("hq", "G2")
    assert again is not None and again is not g2 and again.manual_quarantine is not None
    # No expiry: a year later it is still quarantined.
    assert again.quarantined(NOW + 365 * 86400)
    registry.replace_manual({})
    assert again.manual_quarantine is None and again.healthy


def test_release_ends_an_automatic_quarantine_early() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], NOW)
    for _ in range(3):
        registry.note_send_result(
            "hq", "G1", line_error=True, code="331", threshold=3, cooldown=600, now=NOW
        )
    line = registry.line("hq", "G1")
    assert line is not None and line.auto_quarantined(NOW + 1)
    assert line.last_error_code == "331"
    assert registry.release_auto("hq", "G1", NOW + 1) is True
    assert not line.quarantined(NOW + 1)
    assert registry.release_auto("hq", "G1", NOW + 1) is False


def test_quarantines_after_errors_are_adopted_whole_and_kept_for_absent_lines() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], NOW)
    g1 = AutoQuarantine("hq", "G1", "3 line errors in a row (CMS 331)", "331", NOW, NOW + 600)
    g9 = AutoQuarantine("hq", "G9", "3 line errors in a row (CMS 332)", "332", NOW, NOW + 60)
    assert registry.replace_auto({("hq", "G1"): g1, ("hq", "G9"): g9}, NOW) is False
    line = registry.line("hq", "G1")
    assert line is not None and line.auto_quarantined(NOW + 1)
    assert line.quarantine_reason == g1.reason
    # G9 appears, from a poll or from another instance's snapshot: quarantined at once.
    owner = LineRegistry(["hq"])
    owner.apply_poll("hq", [status("G1"), status("G9")], NOW + 1)
    snapshot.apply(registry, "hq", snapshot.encode(owner.servers["hq"]))
    g9_line = registry.line("hq", "G9")
    assert g9_line is not None and g9_line.auto_quarantined(NOW + 2)
    # The ledger no longer has G1 (released elsewhere): a running one ended. G9 ran out.
    assert registry.replace_auto({("hq", "G9"): g9}, NOW + 2) is True
    assert not line.quarantined(NOW + 2) and line.quarantine_reason is None
    assert registry.replace_auto({}, NOW + 60) is False
    assert registry.auto == {}
