"""What a batch of send reports becomes, decided alike on every backend.

A report (`Ledger.apply_to_task`) names a server, a task id and a number; the backend reads
the recipients of every report of a batch with one statement of its own SQL, calls
`decide_reports`, and writes the planned rounds. Reports are decided in queue order: a later
report of the same recipient sees what an earlier one of the batch did, as one call each
would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from goipd.ledger.rows import recipient_from_row
from goipd.ledger.rules import Change, Planned, after, applied, planned_rounds, transition
from goipd.model import Outcome, Recipient

Applied = tuple[Recipient, Any] | None
"""One report's result: the recipient as read and what its decide returned beside the
outcome, or None when no recipient has its server, task id and number."""
Result = Applied | Exception
"""`Applied`, or what its decide raised."""


def applied_or_raise(result: Result) -> Applied:
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True, slots=True)
class ReportToApply:
    """A report waiting for the writer."""

    key: tuple[str, str, str, str]
    """server, task id, number, +number (`rows.task_key`)"""
    now: float
    decide: Callable[[Recipient], tuple[Outcome | None, Any]]


@dataclass
class Decisions:
    results: list[Result]
    read_from: list[tuple[int, ...]]
    """The recipients each report's result was decided on: the one found, and the one its
    outcome is for (the same one unless decide names another)."""
    rounds: list[Planned]
    elsewhere: list[tuple[Outcome, float]]
    """Outcomes for recipients not among those read (decide may name another)."""


def decide_reports(rows: Sequence[Any], reports: Sequence[ReportToApply]) -> Decisions:
    """`reports` applied to `rows` (recipient rows, `RECIPIENT_COLUMNS`: every recipient of
    every report's server, task id and number or +number). Each report goes to the newest of
    its recipients, as `Ledger.find_by_task` finds it."""
    current: dict[int, Recipient] = {}
    newest: dict[tuple[str | None, str | None, str], int] = {}
    for row in rows:
        recipient = recipient_from_row(row)
        current[recipient.id] = recipient
        key = (recipient.server, recipient.task_id, recipient.number)
        newest[key] = max(newest.get(key, 0), recipient.id)
    states = {rid: (r.state, list(r.excluded_lines)) for rid, r in current.items()}
    # Columns decided for a recipient and not yet folded into current: only a later report
    # of the same recipient needs them, and folding costs a copy of the recipient.
    unfolded: dict[int, list[dict[str, Any]]] = {}
    decisions = Decisions([], [], [], [])
    changes: list[Change] = []
    for report in reports:
        server, task_id, number, plus = report.key
        found = max(
            newest.get((server, task_id, number), 0), newest.get((server, task_id, plus), 0)
        )
        if not found:
            decisions.results.append(None)
            decisions.read_from.append(())
            continue
        recipient = current[found]
        for earlier in unfolded.pop(found, ()):
            recipient = current[found] = applied(recipient, earlier)
        try:
            outcome, extra = report.decide(recipient)
        except Exception as exc:
            # A bug in one report's decision is its caller's error alone (the group committer
            # raises it there): the reports queued with it are pushes never sent again.
            decisions.results.append(exc)
            decisions.read_from.append(())
            continue
        if outcome is not None and outcome.recipient_id in current:
            target = outcome.recipient_id
            state = states[target]
            sets = transition(state[0], state[1], outcome, report.now)
            if sets is not None:
                states[target] = after(state, sets)
                unfolded.setdefault(target, []).append(sets)
                changes.append((target, state[0], sets, report.now))
        elif outcome is not None:
            decisions.elsewhere.append((outcome, report.now))
        decisions.results.append((recipient, extra))
        decisions.read_from.append((found,) if outcome is None else (found, outcome.recipient_id))
    decisions.rounds = planned_rounds(changes)
    return decisions
