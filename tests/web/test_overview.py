"""The status figures besides the lines: queue depth and providers, read from the metrics."""

from __future__ import annotations

from goipd.metrics.catalog import Metrics
from goipd.web import overview


def test_overview_reads_queue_and_providers_from_the_metrics() -> None:
    metrics = Metrics()
    for state, count in (("queued", 3), ("dispatching", 2), ("submitted", 1), ("failed", 7)):
        metrics.queue_messages.labels(state).set(count)
    metrics.queue_oldest_age.set(42.5)
    metrics.add_provider("smsgo")
    metrics.add_provider("c123")
    metrics.provider_balance.labels("smsgo").set(6220)
    metrics.provider_disabled.labels("c123").set(1)
    assert overview.queue(metrics) == {
        "queued": 3,
        "submitted": 3,  # dispatching is shown as submitted, as everywhere in the API
        "sent": 0,
        "delivered": 0,
        "failed": 7,
        "cancelled": 0,
        "expired": 0,
        "oldest_age_seconds": 42.5,
    }
    assert overview.providers(metrics) == [
        {"provider": "c123", "enabled": False, "balance": None},
        {"provider": "smsgo", "enabled": True, "balance": 6220.0},
    ]
