"""Per-client request rate limit on /api/*: one token bucket per API token (or per address when
the API is open), so one misbehaving integration cannot starve the others or the dispatcher.

Buckets of clients not seen for a while are dropped, so the table stays as small as the number
of active clients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from goipd.problem import Problem

IDLE_EVICT = 600.0
MAX_BUCKETS = 10_000
"""More distinct clients than any deployment has tokens or callers: past it the least recently
created buckets go first, so no flood of new client keys can grow the table without end."""


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    """0 = unlimited."""
    burst: int


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def take(self, client: str, limit: RateLimit) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        if limit.per_second <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            while len(self._buckets) >= MAX_BUCKETS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[client] = _Bucket(float(limit.burst), now)
        else:
            bucket.tokens = min(
                float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.per_second
            )
            bucket.updated = now
        if now - self._last_sweep > IDLE_EVICT:
            self._sweep(now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / limit.per_second

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for client in [c for c, b in self._buckets.items() if now - b.updated > IDLE_EVICT]:
            del self._buckets[client]


def rate_check(
    limit: Callable[[], RateLimit],
    client_of: Callable[[web.Request], str],
    limiter: RateLimiter | None = None,
) -> Callable[[web.Request], None]:
    """The rate limit of an /api/ request, raising 429; checked after the token, so
    `client_of` names an authenticated caller."""
    buckets = limiter or RateLimiter()

    def limit_rate(request: web.Request) -> None:
        current = limit()
        wait = buckets.take(client_of(request) or f"addr:{request.remote}", current)
        if wait > 0:
            raise Problem(
                429,
                f"more than {current.per_second:g} requests per second with this token "
                f"(burst {current.burst}); retry after {wait:.1f}s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    return limit_rate
