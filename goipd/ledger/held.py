"""Cloud delivery reports held until their send is recorded (the `HeldStore` role of base.py):
what both backends store and return.

Bounds are the callers': `held_reports` holds at most `limit` rows (goipd/reports/cloud.py
HELD_LIMIT; the oldest give way) and none older than `keep_for` (HELD_FOR) once a retry round
has run (every instance runs one a second). `handover_retries` holds at most `limit` rows
(HANDOVER_RETRIES below), rows are written only for failed or interrupted hand-overs, and
each write deletes those of no more use: retry times over `keep_for` past
(HANDOVER_RETRY_KEEP), and passed ones whose recipient was claimed again or left the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from goipd.model import LedgerError, State

if TYPE_CHECKING:
    from goipd.ledger.base import HeldStore

log = structlog.get_logger("goipd.ledger.held")

HANDOVER_RETRIES = 10_000
"""Failed hand-overs whose retry time is kept (table `handover_retries`, for all instances
together; beyond, those with the earliest retry times go, and wait in goipd until due), and
entries of each dispatcher's cache of them (goipd/dispatch/dispatcher.py). The reconciler
writes them too, for hand-overs a crash cut."""
HANDOVER_RETRY_KEEP = 86400.0
"""Seconds a passed retry time is kept at most: by then the hand-over was tried again, or the
recipient went another way (its row is void once it is claimed again)."""


async def store_handover_retries(
    store: HeldStore, retries: Mapping[int, tuple[int, float]], now: float
) -> None:
    """Keep recipient id → (attempts, retry time) of failed or interrupted hand-overs for every
    instance, before those recipients are queued again. A refusal is logged, not raised: the
    hand-overs then wait in goipd until their send_at (unless an instance remembers the time)."""
    try:
        await store.set_handover_retries(retries, now, HANDOVER_RETRY_KEEP, HANDOVER_RETRIES)
    except LedgerError as exc:
        log.warning("handover_retry_store_failed", reason=str(exc), recipients=len(retries))


HeldKey = tuple[str, str, str | None]
"""(provider, provider message id, number as the report gave it or None): one held report. A
repeat of the same report has the same key and keeps one row."""


@dataclass(frozen=True, slots=True)
class HeldReport:
    """A delivery report nobody matched yet, and when it is to be matched again."""

    provider: str
    upstream_id: str
    number: str | None
    state: State
    """DELIVERED or FAILED: a pending status is never held."""
    code: str
    meaning: str
    held_at: float
    """When it first came: its age (keep_for, and which ones give way to the size cap)."""
    next_try: float
    wait: float
    """Seconds between the tries (doubling after a while)."""

    @property
    def key(self) -> HeldKey:
        return (self.provider, self.upstream_id, self.number)
