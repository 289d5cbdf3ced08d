"""The per-line send rate and quota every instance counts against
(Ledger.reserve_line_sends): sends per line in minute buckets, read as a sliding minute for the
rate, and summed since the last poll for the quota."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BUCKET = 60.0
HORIZON_MINUTES = 60
"""Buckets kept: a quota observed by a poll older than this is not trusted (nothing is sent on
the line until a newer poll)."""
CLOCK_SKEW = 10.0
"""Seconds the instances' clocks may differ: sends this long before a poll still count against
the quota it reported (a few sends of quota are given up rather than overshot)."""


@dataclass(frozen=True, slots=True)
class LineReservation:
    """What Ledger.reserve_line_sends granted, and the bucket it counted the sends in: sends
    given back later must leave that bucket, whatever minute it is by then."""

    minute: int
    granted: dict[tuple[str, str], int]


def minute_bucket(now: float) -> tuple[int, float]:
    """The bucket of `now`, and the weight of the previous bucket's count: the part of the
    minute before `now` that lies in the previous bucket."""
    minute = int(now // BUCKET)
    return minute, 1.0 - (now - minute * BUCKET) / BUCKET


def grant(counts: Mapping[int, int], minute: int, weight: float, want: int, limit: int) -> int:
    """How many of `want` sends fit under `limit` per minute, given the bucket counts."""
    used = counts.get(minute, 0) + counts.get(minute - 1, 0) * weight
    return max(0, min(want, int(limit - used)))


def quota_since(polled_at: float) -> int:
    """The first bucket whose sends a poll at `polled_at` may not have seen."""
    return int((polled_at - CLOCK_SKEW) // BUCKET)


def quota_grant(counts: Mapping[int, int], minute: int, quota: tuple[int, float]) -> int:
    """How many sends the quota a poll reported, (left, polled_at), still allows after every
    instance's sends since that poll."""
    left, polled_at = quota
    since = quota_since(polled_at)
    if since < minute - HORIZON_MINUTES:
        return 0
    used = sum(sends for bucket, sends in counts.items() if bucket >= since)
    return max(0, left - used)
