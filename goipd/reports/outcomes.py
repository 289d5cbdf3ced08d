"""What a GoIP send report means for a recipient and for the line that sent it.

Pushed reports (hooks) and queried ones (reconciliation) go through this one function, so a
report has the same effect whichever way it arrives, and applying it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from goipd.config import RoutingSettings
from goipd.model import FINAL_STATES, RANK, Outcome, Recipient, State
from goipd.upstream import cms
from goipd.upstream.goip import SendReport


class LineEffect(StrEnum):
    NONE = "none"
    SUCCESS = "success"
    """The line delivered a send: its consecutive-error count resets."""
    LINE_ERROR = "line_error"
    """A SIM/module/network fault: counts toward quarantining the line."""


@dataclass(frozen=True, slots=True)
class ReportEffect:
    outcome: Outcome | None
    """None when the report changes nothing (pending, duplicate, stale)."""
    line_effect: LineEffect
    result: str | None
    """For goipd_sms_sent_total{result}: succeeded / failed, once per first final report."""
    delivered: bool
    cms_code: str | None
    """A code of the CMS table, or "unknown": safe as a metric label."""


def retry_delay(settings: RoutingSettings, attempts: int) -> float:
    return float(min(settings.retry_delay * 2 ** max(attempts - 1, 0), 600.0))


def apply_report(
    recipient: Recipient, report: SendReport, settings: RoutingSettings, now: float
) -> ReportEffect:
    nothing = ReportEffect(None, LineEffect.NONE, None, False, None)
    if report.send in ("unsend", "sending"):
        return nothing
    if recipient.state in FINAL_STATES:
        return nothing  # final means final: a late report cannot reopen a recipient
    if report.send == "succeeded":
        target = State.DELIVERED if report.receipt else State.SENT
        if RANK[target] <= RANK[recipient.state]:
            return nothing  # duplicate or out of order: never move backwards
        first_result = recipient.state in (State.DISPATCHING, State.SUBMITTED)
        return ReportEffect(
            Outcome(recipient.id, target),
            LineEffect.SUCCESS,
            "succeeded" if first_result else None,
            report.receipt,
            None,
        )
    # send == "failed"
    if recipient.state not in (State.DISPATCHING, State.SUBMITTED):
        return nothing  # already final, or re-queued after an earlier report of this task
    code = cms.lookup(report.err_code)
    meaning = code.meaning
    raw_code = report.err_code or ""
    klass = code.cms_class
    line_key = f"{recipient.server}/{report.goip_line or recipient.line}"
    retry = (klass is cms.CmsClass.LINE and recipient.attempts < settings.max_attempts) or (
        klass is cms.CmsClass.UNKNOWN and recipient.attempts < 2
    )
    effect = LineEffect.LINE_ERROR if klass is cms.CmsClass.LINE else LineEffect.NONE
    if retry:
        outcome = Outcome(
            recipient.id,
            State.QUEUED,
            error_code=raw_code,
            error_meaning=meaning,
            retry_at=now + retry_delay(settings, recipient.attempts),
            exclude_line=line_key,
        )
    else:
        outcome = Outcome(recipient.id, State.FAILED, error_code=raw_code, error_meaning=meaning)
    # As a metric label only codes of the table are allowed: report bodies are untrusted.
    label = str(code.code) if code.code in cms.CMS_CODES else "unknown"
    return ReportEffect(outcome, effect, "failed", False, label)
