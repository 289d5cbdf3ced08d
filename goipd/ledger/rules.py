"""The recipient state machine as one pure function, shared by every ledger backend."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from goipd.ledger.rows import STATE_OF, storable
from goipd.model import FINAL_STATES, RANK, Outcome, Recipient, State


def transition(
    current: State, excluded: list[str], outcome: Outcome, now: float
) -> dict[str, Any] | None:
    """Columns to update for `outcome`, or None when it must change nothing: final means
    final, states never move backwards, and only a recipient not yet sent may be re-queued."""
    new = outcome.state
    if current in FINAL_STATES or new is State.CANCELLED:
        return None  # cancelling goes through Ledger.cancel
    if outcome.if_state is not None and current is not outcome.if_state:
        return None  # decided on a state that has changed since
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
    elif new is State.EXPIRED:
        if current not in (State.QUEUED, State.DISPATCHING):
            return None  # handed to an upstream: its fate is the upstream's now
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


SENT_AT_IF_NULL = "sent_at IS NULL"
"""Pseudo-column of `planned_updates`: set sent_at (to `now`) only where it is not set yet."""


Planned = dict[tuple[str, ...], list[tuple[Any, ...]]]
"""UPDATEs of one round: per set of changed columns (sorted), one row of values per recipient,
its id last."""


def planned_updates(
    current: Mapping[int, tuple[State, list[str]]], outcomes: Sequence[Outcome], now: float
) -> list[Planned]:
    """The UPDATEs that apply `outcomes`, in order (a later one sees what an earlier one did),
    to recipients whose (state, excluded lines) are `current`, in rounds to run in order. A
    recipient is written once per round: its changes are merged, except that a second change
    of its state starts its next round, so that each change of state is an UPDATE of its own
    and has its status event (one UPDATE would report only the last state). Outcomes for a
    recipient not in `current` (one this ledger never had) change nothing."""
    return planned_timed_updates(current, [(outcome, now) for outcome in outcomes])


def planned_timed_updates(
    current: Mapping[int, tuple[State, list[str]]], outcomes: Iterable[tuple[Outcome, float]]
) -> list[Planned]:
    """`planned_updates` for outcomes that each came at their own time."""
    states = dict(current)
    changes: list[Change] = []
    for outcome, now in outcomes:
        rid = outcome.recipient_id
        found = states.get(rid)
        if found is None:
            continue
        sets = transition(found[0], found[1], outcome, now)
        if sets is None:
            continue
        states[rid] = after(found, sets)
        changes.append((rid, found[0], sets, now))
    return planned_rounds(changes)


Change = tuple[int, State, dict[str, Any], float]
"""A recipient's id, its state before, the columns `transition` set, and when."""


def after(found: tuple[State, list[str]], sets: Mapping[str, Any]) -> tuple[State, list[str]]:
    """A recipient's (state, excluded lines) once `sets` (from `transition`) are written."""
    state = STATE_OF[sets["state"]] if "state" in sets else found[0]
    return state, sets.get("excluded_lines", found[1])


def planned_rounds(changes: Iterable[Change]) -> list[Planned]:
    """The rounds of `planned_updates` for changes already decided, in order."""
    rounds: list[dict[int, dict[str, Any]]] = []
    latest: dict[int, tuple[int, bool]] = {}  # recipient → its round, and if it moved there
    for rid, before, sets, now in changes:
        moves = "state" in sets and STATE_OF[sets["state"]] is not before
        index, moved = latest.get(rid, (0, False))
        if moved and moves:
            index, moved = index + 1, False
        if index == len(rounds):
            rounds.append({})
        merged = rounds[index].setdefault(rid, {})
        merged.update(sets)
        latest[rid] = (index, moved or moves)
        if "delivered_at" in sets and "sent_at" not in merged:
            # A receipt may come before the "succeeded" report: delivered implies sent.
            merged[SENT_AT_IF_NULL] = now
    return [_by_columns(changes) for changes in rounds]


def _by_columns(changes: Mapping[int, dict[str, Any]]) -> Planned:
    by_columns: Planned = {}
    for rid, sets in changes.items():
        if "excluded_lines" in sets:
            sets["excluded_lines"] = json.dumps(sets["excluded_lines"])
        if "sent_at" in sets:
            sets.pop(SENT_AT_IF_NULL, None)
        columns = tuple(sorted(sets))
        by_columns.setdefault(columns, []).append((*(sets[c] for c in columns), rid))
    return by_columns


def applied(recipient: Recipient, sets: Mapping[str, Any]) -> Recipient:
    """`recipient` as it reads once the columns `sets` (from `transition`) are written: what
    a later decision of the same batch must see."""
    fields = {name: value for name, value in sets.items() if name != SENT_AT_IF_NULL}
    if "state" in fields:
        fields["state"] = State(fields["state"])
    if "excluded_lines" in fields:
        fields["excluded_lines"] = tuple(fields["excluded_lines"])
    if "delivered_at" in fields and "sent_at" not in fields and recipient.sent_at is None:
        fields["sent_at"] = fields["delivered_at"]  # delivered implies sent
    return replace(recipient, **fields)
