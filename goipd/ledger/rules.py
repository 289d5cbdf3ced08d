"""The recipient state machine as one pure function, shared by every ledger backend."""

from __future__ import annotations

from typing import Any

from goipd.ledger.base import FINAL_STATES, RANK, Outcome, State
from goipd.ledger.rows import storable


def transition(
    current: State, excluded: list[str], outcome: Outcome, now: float
) -> dict[str, Any] | None:
    """Columns to update for `outcome`, or None when it must change nothing: final means
    final, states never move backwards, and only a recipient not yet sent may be re-queued."""
    new = outcome.state
    if current in FINAL_STATES or new is State.CANCELLED:
        return None  # cancelling goes through Ledger.cancel
    sets: dict[str, Any] = {"updated_at": now}
    if new is State.QUEUED:
        if current not in (State.QUEUED, State.DISPATCHING, State.SUBMITTED):
            return None  # a sent SMS is never queued again
        exclude = storable(outcome.exclude_line) if outcome.exclude_line else None
        if exclude and exclude not in excluded:
            excluded = [*excluded, exclude]
        sets.update(
            state=new.value, next_attempt_at=outcome.retry_at or now, excluded_lines=excluded
        )
    elif new is State.FAILED:
        sets["state"] = new.value
    elif RANK[new] > RANK[current]:
        sets["state"] = new.value
        if new is State.SUBMITTED:
            sets["submitted_at"] = now
        elif new is State.SENT:
            sets["sent_at"] = now
        elif new is State.DELIVERED:
            sets["delivered_at"] = now
    else:
        return None  # duplicate or out of order
    for name in ("task_id", "upstream_id", "error_code", "error_meaning"):
        value = getattr(outcome, name)
        if value is not None:
            sets[name] = storable(value)  # upstream words (error meanings) are untrusted
    return sets
