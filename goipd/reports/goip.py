"""GoIP send reports, pushed or queried, applied to the ledger with the same idempotent rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from goipd.config import RoutingSettings, Server
from goipd.fleet.quarantine import AutoQuarantines
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Receiving
from goipd.metrics.catalog import LabelCache, Metrics
from goipd.model import Outcome, Recipient, State
from goipd.reports.outcomes import LineEffect, ReportEffect, apply_report
from goipd.upstream.goip import SendReport

log = structlog.get_logger("goipd.reports")


@dataclass
class GoipContext:
    servers: Callable[[], dict[str, Server]]
    ledger: Receiving
    registry: LineRegistry
    metrics: Metrics
    routing: Callable[[], RoutingSettings]
    forward_urls: Callable[[], tuple[str, ...]]
    wake_dispatch: Callable[[], None]
    clock: Callable[[], float]
    children: LabelCache = field(default_factory=lambda: LabelCache())
    quarantines: AutoQuarantines | None = None
    """Where a quarantine after line errors is stored for every instance; None: the registry
    alone has it (tests of report application)."""


async def apply_goip_report(ctx: GoipContext, server: str, report: SendReport) -> str:
    """Apply one send report (pushed or queried). Returns ok / unknown_task."""
    now = ctx.clock()
    settings = ctx.routing()

    def decide(recipient: Recipient) -> tuple[Outcome | None, ReportEffect]:
        effect = apply_report(recipient, report, settings, now)
        return effect.outcome, effect

    found = await ctx.ledger.apply_to_task(server, report.task_id, report.number, now, decide)
    late = None
    if report.send == "succeeded" and (found is None or found[0].state is State.FAILED):
        # A task goipd gave up on (failed, or moved elsewhere) that the server sent after all.
        late = await ctx.ledger.late_send(server, report.task_id, report.number)
        if late is not None:
            _late_send(ctx, server, report, *late)
    if found is None:
        if late is None:
            log.info("report_unmatched", server=server, task_id=report.sub_task_id)
        return "unknown_task" if late is None else "ok"
    recipient, effect = found
    if effect.outcome is None:
        return "ok"
    # The line as the report names it only if goipd knows it: report bodies are untrusted and
    # every distinct value would become a metric series.
    reported = report.goip_line
    line = (
        reported
        if reported and ctx.registry.line(server, reported) is not None
        else recipient.line or ""
    )
    if effect.result is not None:
        ctx.children.get(ctx.metrics.sms_sent, "goip", server, line, effect.result).inc()
    if effect.delivered:
        ctx.children.get(ctx.metrics.sms_delivered, "goip", server, line).inc()
    if effect.cms_code is not None:
        ctx.metrics.cms_errors.labels(server, line, effect.cms_code or "none").inc()
    if (
        effect.line_effect is not LineEffect.NONE
        and line
        and ctx.registry.note_send_result(
            server,
            line,
            line_error=effect.line_effect is LineEffect.LINE_ERROR,
            code=effect.cms_code,
            threshold=settings.quarantine_after,
            cooldown=settings.quarantine_for,
            now=now,
        )
        and ctx.quarantines is not None
    ):
        # Counted here, among this instance's reports; the quarantine is for every instance.
        await ctx.quarantines.store(server, line, now)
    if effect.outcome.state is State.QUEUED:
        ctx.wake_dispatch()
    # Per report, so at debug: at info it was 6% of the CPU of a busy push endpoint.
    log.debug(
        "report_applied",
        server=server,
        line=line,
        task_id=report.sub_task_id,
        message_id=recipient.message_id,
        state=effect.outcome.state.value,
        err_code=effect.cms_code,
    )
    return "ok"


def _late_send(
    ctx: GoipContext, server: str, report: SendReport, recipient_id: int, after: str
) -> None:
    """The server sent a recipient goipd had failed, or moved to another route when the
    server stalled: counted once, never silent (the recipient's own record stays as it is)."""
    ctx.metrics.late_sends.labels(server, after).inc()
    log.warning(
        "late_send_counted",
        server=server,
        task_id=report.sub_task_id,
        recipient_id=recipient_id,
        after=after,
    )
