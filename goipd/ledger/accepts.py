"""What a batch of accepts becomes, decided alike on every backend: which requests replay an
idempotency key, which the flood guard refuses, and the rows of the new messages.

The backends read what the decisions need (messages already holding a key, the latest live
recipient per number and text) with their own SQL, call `plan_accepts`, write the planned rows
and turn the outcome into results with `accept_results`. Accepts are decided in queue order:
a later one sees what an earlier one of the same batch did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goipd.ledger.rows import message_row, new_message_id
from goipd.model import AcceptResult, Message, NewMessage

Latest = dict[tuple[str, str], tuple[float, str]]
"""(number, text hash) → (created_at, message id) of the latest live recipient."""
Outcome = str | tuple[str, str | None]
"""A message made by this batch (its id), or (an earlier message's id, the number that makes
the request a duplicate, or None for an idempotency key replayed)."""


def guarded_numbers(
    messages: Sequence[NewMessage], digests: Sequence[str]
) -> dict[str, tuple[float, set[str]]]:
    """What the flood guard must look up for a batch: per text hash, the earliest window
    start of the accepts with that text and every number they go to."""
    wanted: dict[str, tuple[float, set[str]]] = {}
    for message, digest in zip(messages, digests, strict=True):
        since = message.duplicate_since
        if since is None:
            continue
        earliest, numbers = wanted.get(digest, (since, set()))
        numbers.update(message.recipients)
        wanted[digest] = (min(earliest, since), numbers)
    return wanted


def note_latest(latest: Latest, number: str, digest: str, created_at: float, message: str) -> None:
    """Keep the newest recipient per (number, text hash) of what a backend read."""
    known = latest.get((number, digest))
    if known is None or created_at > known[0]:
        latest[(number, digest)] = (created_at, message)


@dataclass
class AcceptPlan:
    message_rows: list[tuple[Any, ...]] = field(default_factory=list)
    """`rows.message_row` of each new message (`rows.message_from_row` reads it back)."""
    recipient_rows: list[tuple[str, str, float, str, float, int, float | None]] = field(
        default_factory=list
    )
    """(message id, number, next_attempt_at, text hash, created_at, priority, expires_at) of
    each new recipient."""
    outcomes: list[Outcome] = field(default_factory=list)
    """One per accept, in order."""


def plan_accepts(
    accepts: Sequence[tuple[NewMessage, float]],
    digests: Sequence[str],
    stored: Mapping[str, str],
    latest: Latest,
) -> AcceptPlan:
    """Decide each (message, time) of a batch: `stored` maps the idempotency keys the ledger
    already holds to their message; `latest` is what the flood guard found (updated here, so
    a later accept of the batch sees an earlier one)."""
    guarded = {
        digest
        for (message, _), digest in zip(accepts, digests, strict=True)
        if message.duplicate_since is not None
    }
    plan = AcceptPlan()
    created: dict[str, str] = {}  # idempotency key → message made earlier in this batch
    for (new, now), digest in zip(accepts, digests, strict=True):
        key = new.idempotency_key
        replayed = None if key is None else stored.get(key) or created.get(key)
        if replayed is not None:
            plan.outcomes.append((replayed, None))
            continue
        since = new.duplicate_since
        if since is not None:
            hit = next(
                (
                    (latest[(number, digest)][1], number)
                    for number in new.recipients
                    if (number, digest) in latest and latest[(number, digest)][0] >= since
                ),
                None,
            )
            if hit is not None:
                plan.outcomes.append(hit)
                continue
        message_id = new_message_id(now)
        start = new.send_at if new.send_at is not None else now
        plan.message_rows.append(message_row(message_id, new, now))
        plan.recipient_rows.extend(
            (message_id, number, start, digest, now, new.priority, new.expires_at)
            for number in new.recipients
        )
        if key is not None:
            created[key] = message_id
        if digest in guarded:
            for number in new.recipients:
                latest[(number, digest)] = (now, message_id)
        plan.outcomes.append(message_id)
    return plan


def earlier_ids(plan: AcceptPlan) -> list[str]:
    """Messages the results need that this batch did not make: load them."""
    made = {row[0] for row in plan.message_rows}
    return [o[0] for o in plan.outcomes if isinstance(o, tuple) and o[0] not in made]


def accept_results(plan: AcceptPlan, messages: Mapping[str, Message]) -> list[AcceptResult]:
    """One result per accept, from the messages made and loaded (by id)."""
    return [
        AcceptResult(messages[o], created=True)
        if isinstance(o, str)
        else AcceptResult(messages[o[0]], False, duplicate_number=o[1])
        for o in plan.outcomes
    ]
