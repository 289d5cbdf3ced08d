"""Replies a pulling provider may have handed out without goipd storing them.

c123 hands each reply out once (`/rx/`). When a fetch times out or its answer comes back cut
short or garbled, c123 may have handed replies out that goipd never read: those are gone from
the plain fetch for good. c123 can give out every reply of one hour again (`time=`), at most
one fetch per 10 minutes, so the hours such a fetch may have covered — from just before the
last fetch goipd read and stored whole up to the failed one — are fetched again, one per poll,
oldest first, and only what the ledger does not hold yet is stored. The first plain fetch after
that is checked the same way: a reply still waiting at c123 may have come with its hour already.

The same holds for a fetch whose replies goipd read but did not store: the process died (or was
killed) before, or the ledger refused them. So the plan lives in the ledger (`provider_state`,
document `replies` of the provider, read at the start of every poll: after a restart, and on
whichever instance holds the provider's lease), and every plain fetch is announced there before
it is made (`fetching`, goipd's time when it started) and cleared once its replies are stored. A
poll that finds the announcement of a fetch still there plans that fetch's hours as if its
answer had been lost; a poll that cannot write the announcement fetches nothing. Nothing is
kept in memory between polls.

A reply is the same reply when its number, text and upstream time (to the second) are: two
identical texts from one number within one second are kept as many times as they came.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from goipd.ledger.base import InboundStore, ProviderDocuments
from goipd.ledger.rows import storable
from goipd.upstream.cloud import CloudInbound

log = structlog.get_logger("goipd.clouds.reply_recovery")

HOUR = timedelta(hours=1)
CLOCK_SLACK = timedelta(minutes=10)
"""How far goipd's and the provider's clocks, and a reply's time and its fetch, may differ."""
FIRST_FETCH_LOOKBACK = timedelta(hours=1)
"""Without a whole fetch before it (ever, on this ledger), how far back a failed one may reach."""
MAX_HOURS = 24
"""At most this many hours are planned at once (the newest kept): the document stays small, and
a plan drains within MAX_HOURS polls (4 hours at c123's 10 minutes)."""
TRIES_PER_HOUR = 3
"""Failed fetches of one hour before it is given up (logged, counted in
goipd_cloud_reply_hours_abandoned_total)."""
STORED_PAGE = 500
DOCUMENT = "replies"
"""The name of the plan's document in `provider_state` (one per provider)."""

Key = tuple[str, str, str]


class Superseded(Exception):
    """Another instance changed the plan since this one read it: it polls the provider now."""


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
    """What one provider's reply polling must know from one poll to the next, as the ledger
    holds it (`load`, `save`)."""

    last_whole_fetch: datetime | None = None
    """When the last fetch whose replies were all stored was made."""
    fetching: datetime | None = None
    """When the plain fetch under way started; still set at the next poll, that fetch's
    replies may not all be stored (the process died, the ledger refused them)."""
    hours: deque[datetime] = field(default_factory=deque)
    tries: int = 0
    """Failed fetches of hours[0] so far."""
    check_next_fetch_since: datetime | None = None
    """Set after hours were fetched again: the next plain fetch leaves out what is stored
    since then."""
    version: int = 0
    """The document's version in the ledger when read (0: none yet); not part of it."""

    def fetch_started(self, at: datetime) -> None:
        self.fetching = at

    def fetched_whole(self, at: datetime) -> None:
        """The plain fetch made at `at` was read and its replies stored."""
        self.last_whole_fetch = at
        self.fetching = None
        self.check_next_fetch_since = None

    def fetch_failed(self) -> None:
        """The plain fetch under way was answered with an error: nothing was handed out."""
        self.fetching = None

    def fetch_lost(self, at: datetime) -> list[datetime]:
        """A fetch made at `at` got no usable answer after the provider may have answered it,
        or its replies were not all stored: plan its hours (added to any still planned);
        returns them."""
        start = (self.last_whole_fetch or at - FIRST_FETCH_LOOKBACK) - CLOCK_SLACK
        # A whole fetch long ago: only the newest MAX_HOURS are kept anyway.
        start = max(start, at + CLOCK_SLACK - MAX_HOURS * HOUR)
        first = self.hours[0] if self.hours else None
        self.hours = deque(sorted({*self.hours, *hours_between(start, at + CLOCK_SLACK)}))
        while len(self.hours) > MAX_HOURS:
            self.hours.popleft()
        if not self.hours or self.hours[0] != first:
            self.tries = 0
        self.fetching = None
        return list(self.hours)

    def hour_fetched(self) -> datetime:
        """hours[0] was fetched again and what was new in it stored: the next one's turn."""
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

    def to_json(self) -> str:
        return json.dumps(
            {
                "last_whole_fetch": _iso(self.last_whole_fetch),
                "fetching": _iso(self.fetching),
                "hours": [hour.isoformat() for hour in self.hours],
                "tries": self.tries,
                "check_next_fetch_since": _iso(self.check_next_fetch_since),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str, version: int) -> ReplyRecovery:
        """ValueError (or KeyError, TypeError) when `body` is not a plan."""
        doc: dict[str, Any] = json.loads(body)
        hours = sorted(_time(hour) for hour in doc["hours"])
        return cls(
            last_whole_fetch=_opt_time(doc["last_whole_fetch"]),
            fetching=_opt_time(doc["fetching"]),
            hours=deque(hours[-MAX_HOURS:]),
            tries=int(doc["tries"]),
            check_next_fetch_since=_opt_time(doc["check_next_fetch_since"]),
            version=version,
        )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise TypeError(f"expected a time, got {text!r}")
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return at


def _opt_time(text: Any) -> datetime | None:
    return None if text is None else _time(text)


async def load(documents: ProviderDocuments, provider: str, now: datetime) -> ReplyRecovery:
    """The provider's plan as the ledger holds it (LedgerError if it cannot be read). A
    document goipd cannot read (written by hand, or by a later version) is taken as the
    announcement of a fetch made `now`: the hours around it are fetched again."""
    found = await documents.provider_document(provider, DOCUMENT)
    if found is None:
        return ReplyRecovery()
    body, version = found
    try:
        return ReplyRecovery.from_json(body, version)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("inbound_state_unreadable", provider=provider, reason=str(exc))
        return ReplyRecovery(fetching=now, version=version)


async def save(
    documents: ProviderDocuments, provider: str, recovery: ReplyRecovery, now: float
) -> None:
    """Write the plan from the version it was read at (LedgerError if the ledger refuses;
    Superseded if another instance wrote it since)."""
    version = await documents.put_provider_document(
        provider, DOCUMENT, recovery.to_json(), recovery.version, now
    )
    if version is None:
        raise Superseded(provider)
    recovery.version = version


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
