"""Replies a pulling provider may have handed out without goipd getting them.

c123 hands each reply out once (`/rx/`). When a fetch times out or its answer comes back cut
short or garbled, c123 may have handed replies out that goipd never read: those are gone from
the plain fetch for good. c123 can give out every reply of one hour again (`time=`), at most
one fetch per 10 minutes, so the hours such a fetch may have covered — from just before the
last fetch goipd read whole up to the failed one — are fetched again, one per poll, oldest
first, and only what the ledger does not hold yet is stored. The first plain fetch after that
is checked the same way: a reply still waiting at c123 may have come with its hour already.

A reply is the same reply when its number, text and upstream time (to the second) are: two
identical texts from one number within one second are kept as many times as they came.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from goipd.ledger.base import InboundStore
from goipd.ledger.rows import storable
from goipd.upstream.cloud import CloudInbound

HOUR = timedelta(hours=1)
CLOCK_SLACK = timedelta(minutes=10)
"""How far goipd's and the provider's clocks, and a reply's time and its fetch, may differ."""
FIRST_FETCH_LOOKBACK = timedelta(hours=1)
"""Without a whole fetch earlier in this process, how far back a failed one may reach."""
MAX_HOURS = 24
"""At most this many hours are fetched again after one failed fetch (newest kept)."""
TRIES_PER_HOUR = 3
"""Failed fetches of one hour before it is given up (logged as an error)."""
STORED_PAGE = 500

Key = tuple[str, str, str]


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """The starts of the UTC hours from the one holding `start` to the one holding `end`
    (Beijing time, which c123 counts in, is UTC+8: the same hour boundaries)."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    last = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    while first <= last:
        hours.append(first)
        first += HOUR
    return hours


@dataclass
class ReplyRecovery:
    """What one provider's reply polling still has to fetch again."""

    last_whole_fetch: datetime | None = None
    """When the last fetch goipd read whole was made."""
    hours: deque[datetime] = field(default_factory=deque)
    tries: int = 0
    """Failed fetches of hours[0] so far."""
    check_next_fetch_since: datetime | None = None
    """Set after hours were fetched again: the next plain fetch leaves out what is stored
    since then."""

    def fetched_whole(self, at: datetime) -> None:
        self.last_whole_fetch = at

    def fetch_lost(self, at: datetime) -> list[datetime]:
        """A fetch made at `at` got no usable answer after the provider may have answered it:
        plan its hours (added to any still planned); returns them."""
        start = (self.last_whole_fetch or at - FIRST_FETCH_LOOKBACK) - CLOCK_SLACK
        for hour in hours_between(start, at + CLOCK_SLACK):
            if hour not in self.hours:
                self.hours.append(hour)
        while len(self.hours) > MAX_HOURS:
            self.hours.popleft()
        return list(self.hours)

    def hour_fetched(self) -> datetime:
        """hours[0] was fetched again: the next one's turn."""
        hour = self.hours.popleft()
        self.tries = 0
        since = hour - CLOCK_SLACK
        if self.check_next_fetch_since is None or since < self.check_next_fetch_since:
            self.check_next_fetch_since = since
        return hour

    def hour_failed(self) -> datetime | None:
        """Fetching hours[0] again failed; returns it when that was its last try (dropped)."""
        self.tries += 1
        if self.tries < TRIES_PER_HOUR:
            return None
        self.tries = 0
        return self.hours.popleft()


def _key(number: str, content: str, upstream_time: str) -> Key:
    return storable(number), storable(content), storable(upstream_time)


async def not_stored(
    ledger: InboundStore, source: str, replies: Sequence[CloudInbound], since: datetime
) -> list[CloudInbound]:
    """`replies` less those the ledger already holds from `source`, looking at what it stored
    since `since` (each stored reply stands for one fetched copy)."""
    stored: Counter[Key] = Counter()
    cutoff = since.timestamp()
    before: int | None = None
    while True:
        page = await ledger.list_inbound(STORED_PAGE, before)
        stored.update(
            _key(r.from_number, r.content, r.upstream_time) for r in page if r.source == source
        )
        if len(page) < STORED_PAGE or page[-1].received_at < cutoff:
            break
        before = page[-1].id
    fresh = []
    for reply in replies:
        key = _key(reply.from_number, reply.text, reply.upstream_time)
        if stored[key] > 0:
            stored[key] -= 1
        else:
            fresh.append(reply)
    return fresh
