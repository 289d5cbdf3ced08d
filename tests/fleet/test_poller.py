"""The poller spreads the servers' scheduled polls evenly over the poll interval."""

from __future__ import annotations

import time

from goipd.config import parse_settings
from goipd.fleet.poller import FleetPoller
from goipd.fleet.registry import LineRegistry
from goipd.metrics.catalog import Metrics


async def test_scheduled_polls_are_spread_evenly_over_the_interval() -> None:
    servers = "\n".join(
        f"  - {{name: s{i:03d}, url: 'http://127.0.0.1:9', username: root, password: pw, "
        "poll_interval: 1h, timeout: 5s}"
        for i in range(200)
    )
    settings = parse_settings(f"polling: {{jitter: 0.1}}\nservers:\n{servers}\n")
    registry = LineRegistry()
    poller = FleetPoller(registry, Metrics(), settings.polling)
    poller.configure({s.name: s for s in settings.servers})
    started = time.time()
    poller.start()
    try:
        assert poller._scheduler is not None
        offsets = sorted(
            job.next_run_time.timestamp() - started for job in poller._scheduler.get_jobs()
        )
    finally:
        await poller.stop()
    interval = 3600.0
    assert len(offsets) == 200
    assert offsets[0] > 0 and offsets[-1] <= interval + 1
    # Evenly: no two servers share a second, no stretch of the interval goes unpolled.
    gaps = [b - a for a, b in zip([0.0, *offsets], [*offsets, interval], strict=True)]
    assert max(gaps) < 3 * interval / 200
    assert min(gaps[1:-1]) > interval / 200 / 3
