"""The figures of `GET /api/v1/status` besides the lines: line counts per server, queue depth
and provider balances. Queue and provider figures are read from the metrics (refreshed every
few seconds by the daemon), never from the ledger per request: a status page left open must
not cost a table scan every refresh."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import Gauge

from goipd.fleet.registry import LineRegistry, LineState
from goipd.metrics.catalog import Metrics
from goipd.model import PUBLIC_STATES, State


def _samples(gauge: Gauge) -> list[tuple[dict[str, str], float]]:
    # collect() of one metric touches only its own children: cheap, unlike asking the registry.
    return [(s.labels, s.value) for family in gauge.collect() for s in family.samples]


def server_counts(registry: LineRegistry, name: str, now: float) -> dict[str, int]:
    """Lines by state, plus how many are quarantined and how many routing may use."""
    lines = registry.servers[name].lines.values()
    by_state: Counter[str] = Counter(line.state.value for line in lines)
    counts = {state.value: by_state.get(state.value, 0) for state in LineState}
    counts["quarantined"] = sum(1 for line in lines if not line.gone and line.quarantined(now))
    counts["healthy"] = sum(1 for line in lines if line.healthy)
    return counts


def queue(metrics: Metrics) -> dict[str, Any]:
    figures: dict[str, Any] = dict.fromkeys(PUBLIC_STATES, 0)
    for labels, value in _samples(metrics.queue_messages):
        # The API shows dispatching as submitted (see api.recipient_json).
        state = State.SUBMITTED.value if labels["state"] == State.DISPATCHING else labels["state"]
        if state in figures:
            figures[state] += int(value)
    oldest = _samples(metrics.queue_oldest_age)
    figures["oldest_age_seconds"] = oldest[0][1] if oldest else 0.0
    return figures


def providers(metrics: Metrics) -> list[dict[str, Any]]:
    """Every configured cloud provider (each has a goipd_provider_disabled series)."""
    balances = {labels["provider"]: value for labels, value in _samples(metrics.provider_balance)}
    return [
        {
            "provider": labels["provider"],
            "enabled": value == 0,
            "balance": balances.get(labels["provider"]),
        }
        for labels, value in sorted(
            _samples(metrics.provider_disabled), key=lambda sample: sample[0]["provider"]
        )
    ]
