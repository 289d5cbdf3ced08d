"""Per-token rate limit on /api/*: token buckets, and 429 over real HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from goipd.web.ratelimit import MAX_BUCKETS, RateLimit, RateLimiter
from tests.helpers.daemons import API_TOKEN, daemon_config, fleet_spec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_rate_per_client() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(per_second=2.0, burst=3)
    assert [limiter.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", limit) == 0.5  # one token comes back every 0.5 s
    assert limiter.take("b", limit) == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("a", limit) == 0.0
    assert limiter.take("a", limit) > 0
    clock.now += 100
    assert [limiter.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]  # never above burst
    assert limiter.take("a", limit) > 0


def test_zero_means_unlimited_and_idle_clients_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert all(limiter.take("a", RateLimit(0.0, 1)) == 0.0 for _ in range(1000))
    limiter.take("a", RateLimit(1.0, 1))
    clock.now += 10_000
    limiter.take("b", RateLimit(1.0, 1))
    assert set(limiter._buckets) == {"b"}


async def test_over_the_limit_is_429_with_retry_after(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    other = "other-token-0123456789abcdef"
    config = daemon_config(sim, ["hq"], tmp_path, api={"rate_limit": 1, "rate_limit_burst": 5})
    config["http"]["api_tokens"] = [API_TOKEN, other]
    daemon = await daemon_factory(config)
    url = f"http://127.0.0.1:{daemon.port}/api/v1/lines"
    async with aiohttp.ClientSession() as session:
        mine = {"Authorization": f"Bearer {API_TOKEN}"}
        statuses = []
        for _ in range(7):
            async with session.get(url, headers=mine) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.content_type == "application/problem+json"
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert API_TOKEN not in await resp.text()
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        # Another token is not slowed down by the first one's burst.
        async with session.get(url, headers={"Authorization": f"Bearer {other}"}) as resp:
            assert resp.status == 200
        # Probes and Prometheus are never limited.
        for _ in range(10):
            async with session.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
                assert resp.status == 200
        # A wrong token is still a 401, not a 429.
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401


def test_the_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(Clock())
    limit = RateLimit(1.0, 1)
    for index in range(MAX_BUCKETS + 500):
        limiter.take(f"client-{index}", limit)
    assert len(limiter._buckets) == MAX_BUCKETS
    assert "client-0" not in limiter._buckets  # the oldest went first


async def test_without_tokens_the_limit_is_per_address_whatever_the_header(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    config = daemon_config(sim, ["hq"], tmp_path, api={"rate_limit": 1, "rate_limit_burst": 2})
    config["http"].pop("api_tokens", None)
    daemon = await daemon_factory(config)
    url = f"http://127.0.0.1:{daemon.port}/api/v1/lines"
    async with aiohttp.ClientSession() as session:
        statuses = []
        for index in range(5):
            # A new made-up token each time must not buy a new bucket.
            async with session.get(url, headers={"Authorization": f"Bearer x{index}"}) as resp:
                statuses.append(resp.status)
    assert statuses == [200, 200, 429, 429, 429]
