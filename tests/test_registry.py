"""Every line transition is exactly one structlog event; gone lines are marked, not kept."""

from __future__ import annotations

import structlog

from goipd.fleet.registry import LineRegistry, LineState
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
