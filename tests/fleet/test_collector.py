"""The fleet's gauges come from the instance that polls the server, and from no other."""

from __future__ import annotations

from prometheus_client import generate_latest

from goipd.fleet.collector import FleetCollector
from goipd.fleet.registry import LineRegistry
from goipd.metrics.catalog import Metrics
from goipd.upstream.goip import LineStatus
from tests.helpers.checks import sample

NOW = 1_800_000_000.0


def status(line_id: str, online: bool = True, day: int | None = None) -> LineStatus:
    return LineStatus(line_id, online, online, "LOGIN" if online else "LOGOUT", None, day)


def test_fleet_metrics_come_from_the_polling_instance_only() -> None:
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1")], NOW)
    metrics = Metrics()
    FleetCollector(registry, metrics)
    metrics.instance_leader.labels("hq").set(1)
    text = metrics.render().decode()
    assert sample(text, "goipd_line_online", server="hq", line="G1") == 1.0
    assert sample(text, "goipd_server_up", server="hq") == 1.0
    registry.servers["hq"].owned = False
    metrics.instance_leader.labels("hq").set(0)
    for text in (metrics.render().decode(), _collected(metrics)):
        assert sample(text, "goipd_line_online", server="hq", line="G1") is None
        assert sample(text, "goipd_server_up", server="hq") is None
    assert sample(metrics.render().decode(), "goipd_instance_leader", server="hq") == 0.0


def _collected(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_stall_is_exported_from_the_registry_as_it_changes() -> None:
    registry = LineRegistry(["hq", "branch"])
    for name in ("hq", "branch"):
        registry.apply_poll(name, [status("G1")], NOW)
    metrics = Metrics()
    FleetCollector(registry, metrics)
    assert sample(metrics.render().decode(), "goipd_server_stalled", server="hq") == 0.0
    registry.mark_stalled("hq", NOW + 1, "task 1 unsend for 130s")
    # Both expositions (the cached text and prometheus_client's) say the same at every step.
    for text in (metrics.render().decode(), _collected(metrics)):
        assert sample(text, "goipd_server_stalled", server="hq") == 1.0
        assert sample(text, "goipd_server_stalled", server="branch") == 0.0
    registry.apply_poll("hq", [status("G1", online=False)], NOW + 2)  # the engine is back
    for text in (metrics.render().decode(), _collected(metrics)):
        assert sample(text, "goipd_server_stalled", server="hq") == 0.0
