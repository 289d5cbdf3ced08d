"""Recovers what push reports did not tell: lost reports, and sends cut short by a crash.

- `submitted` longer than `query_after`: ask the SMS Server with querysms (per task), apply the
  answers exactly as if pushed; past `report_deadline` with no result: fail `report_timeout`,
  or `server_removed` when a reload took the server out of the config (nobody asks it then).
- `dispatching` (the claim was written, the answer was not): the process died, or its send task
  did, inside the sendsms call, so no task id was recorded. GoIP task ids are global increasing
  integers per server, and the task, if the server created one, was created during the call:
  after the last task recorded before the claim and before the first task recorded well after
  it (instances sharing a ledger keep sending meanwhile). The ids in between that goipd has not
  recorded are asked for with querysms, and a task that holds the recipient's number is
  adopted instead of sending again. Reports carry numbers, not text: claims waiting on one
  number get tasks in id order by claim time, a task settles claims of one message only, and a
  task id some recipient carries in the ledger is never adopted. Only a claim whose task is
  not found that way is re-queued, counted in goipd_dispatch_ambiguous_total: the one window
  in which a recipient can be sent twice (another client of the same SMS Server sending in
  between can push the task beyond the scanned ids).

A send whose answer was lost (timed out, cut off, unreadable) is settled the same way, right
away rather than after a crash: its claim stays, the task ids around the call are asked about a
few times (the server may store the task late), and only a claim whose task is not found is
queued again.

With several instances on one ledger (goipd/fleet/ha.py) each settles the claims of its own past and
those of instances whose heartbeat expired, never a live instance's sends in flight; it takes
them over in the ledger first, so no two instances settle one claim. Submitted sends are asked
about by the instance that polls their server.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Literal

import structlog

from goipd.config import ReconcileSettings
from goipd.ledger.base import HeldStore
from goipd.ledger.held import store_handover_retries
from goipd.model import LedgerError, Outcome, Recipient, State, whole_server
from goipd.reports.goip import GoipContext, apply_goip_report
from goipd.reports.outcomes import retry_delay
from goipd.reports.stalls import ENGINE_STALLED, StallWatch
from goipd.upstream.errors import UpstreamError
from goipd.upstream.goip import GoipClient, SendReport

log = structlog.get_logger("goipd.reports.reconcile")
BATCH = 500
TASK_SCAN_MARGIN = 8
"""Task ids scanned beyond the claims to recover, for other clients of the same SMS Server."""
CLOCK_SLACK = 5.0
"""Seconds by which the clocks of instances sharing a ledger may disagree (claim times and
submit times come from different hosts): the task-id window is widened by this much."""
MAX_TASK_SCAN = 2000
"""querysms calls per server and sweep at most; claims not found by then are re-queued."""
DEADLINE_MEANINGS = {
    "report_timeout": "no send result from the SMS Server within the deadline",
    ENGINE_STALLED: "its SMS Server's engine stalled and did not send it within a day (the "
    "engine drops what it has held that long)",
}
Search = Literal["proven", "no_anchor", "unanswered"]
"""How a search for interrupted sends' tasks ended: the rest provably absent; no task id of the
server known to say where to look; the server did not answer querysms."""
LOST_CLAIM_RETRY = 1.0
"""Seconds at most before a claim lost to a restart is tried again (retry_delay if shorter)."""
VERIFY_RETRY = 5.0
"""Seconds at least between searches while the server does not answer."""
VERIFY_AFTER = (1.0, 0.5, 1.0, 2.0)
"""When an unconfirmed send is looked for: 1 s after its call ended, then 0.5, 1 and 2 send
timeouts after each look before: a server whose web server queued the request runs it late,
and stores the task then. About 3.5 send timeouts in all, well inside the stale-claim sweep."""


class Reconciler:
    def __init__(
        self,
        ctx: GoipContext,
        clients: Callable[[str], GoipClient | None],
        settings: Callable[[], ReconcileSettings],
        handovers: HeldStore,
        *,
        stale_claim_after: float = 300.0,
        owned: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.clients = clients
        self.settings = settings
        self.handovers = handovers
        """Where the retry times of interrupted hand-overs go (the ledger)."""
        self.stale_claim_after = stale_claim_after
        self.owned = owned or (lambda: list(ctx.servers()))
        """The servers this instance polls, and so asks about submitted sends."""
        self.stalls = StallWatch(
            ctx.ledger, ctx.registry, ctx.metrics, ctx.servers, ctx.routing, ctx.wake_dispatch
        )
        self._verifying: set[asyncio.Task[None]] = set()
        self.verifying: Counter[str] = Counter()
        """Servers with unconfirmed sends being looked for: dispatch leaves them alone
        meanwhile, so a server whose answers keep getting lost cannot pile up more."""

    def unconfirmed(
        self, server: str, recipients: Sequence[Recipient], started: float, error: UpstreamError
    ) -> None:
        """A send whose answer was lost: find its task before anything is sent again. The
        recipients stay `dispatching` meanwhile (a crash leaves them to startup())."""
        self.verifying[server] += 1
        task = asyncio.create_task(self._verify(server, list(recipients), started, error))
        self._verifying.add(task)
        task.add_done_callback(self._verifying.discard)
        task.add_done_callback(lambda _task: self._verified(server))

    def _verified(self, server: str) -> None:
        self.verifying[server] -= 1
        if self.verifying[server] <= 0:
            del self.verifying[server]
            self.ctx.wake_dispatch()

    async def stop(self) -> None:
        for task in list(self._verifying):
            task.cancel()
        await asyncio.gather(*self._verifying, return_exceptions=True)

    async def _verify(
        self, server: str, recipients: list[Recipient], started: float, error: UpstreamError
    ) -> None:
        # The claim time is when the call started: the task, if any, was created after it.
        pending = [replace(r, updated_at=started) for r in recipients]
        proven: Search = "no_anchor"
        give_up_at = self.ctx.clock() + self.stale_claim_after / 2
        try:
            for index, factor in enumerate(VERIFY_AFTER):
                client = self.clients(server)
                await asyncio.sleep(
                    factor if index == 0 or client is None else factor * client.send_timeout
                )
                pending, proven = await self._adopt_tasks(server, pending)
                if not pending:
                    break
            while pending and proven == "unanswered" and self.ctx.clock() < give_up_at:
                # The server does not answer querysms (the fault that lost the send's answer,
                # most likely): ask again until it does, holding its sends meanwhile.
                client = self.clients(server)
                await asyncio.sleep(max(client.send_timeout if client else 0.0, VERIFY_RETRY))
                pending, proven = await self._adopt_tasks(server, pending)
            adopted = len(recipients) - len(pending)
            if adopted:
                self.ctx.metrics.send_verifications.labels(server, "adopted").inc(adopted)
            if pending and proven != "proven":
                # Nothing proves the task absent (goipd has recorded no task of this server to
                # say which ids to ask about, or the server would not answer): the claims wait
                # for the stale-claim sweep, which asks again.
                log.warning("unconfirmed_sends_waiting", server=server, recipients=len(pending))
            elif pending:
                await self._requeue_unconfirmed(server, pending, error)
        except LedgerError as exc:
            # The claims stay `dispatching`: the stale-claim sweep settles them later.
            log.error("send_verification_failed", server=server, reason=str(exc))

    async def _requeue_unconfirmed(
        self, server: str, recipients: list[Recipient], error: UpstreamError
    ) -> None:
        settings = self.ctx.routing()
        now = self.ctx.clock()
        code = f"upstream_{error.reason.value}"
        outcomes = []
        for r in recipients:
            attempts = r.attempts + 1
            if attempts >= settings.max_attempts:
                outcomes.append(
                    Outcome(
                        r.id,
                        State.FAILED,
                        error_code=code,
                        error_meaning=f"{error.detail} (after {attempts} attempts)",
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        r.id,
                        State.QUEUED,
                        error_code=code,
                        error_meaning=f"{error.detail}; the SMS Server holds no task for it",
                        retry_at=now + retry_delay(settings, attempts),
                        exclude_line=whole_server(server),
                    )
                )
        await self.ctx.ledger.record(outcomes, now)
        # The one window in which a recipient can be sent twice (see the module docstring).
        self.ctx.metrics.dispatch_ambiguous.inc(len(recipients))
        self.ctx.metrics.send_verifications.labels(server, "requeued").inc(len(recipients))
        log.warning("unconfirmed_sends_requeued", server=server, recipients=len(recipients))
        self.ctx.wake_dispatch()

    async def startup(self) -> None:
        """Before dispatch starts: settle every claim left by a previous process (of this
        instance id, or of a dead instance), and ask about every submitted send of the servers
        this instance polls, so nothing is resent that may already be out."""
        now = self.ctx.clock()
        await self._requeue_claims(now + 1.0)
        overdue = await self._query_submitted(now + 1.0)
        await self._review_stalls(now)
        await self._fail_overdue(overdue, now)
        log.info("startup_reconciled")

    async def run_once(self) -> None:
        now = self.ctx.clock()
        await self._requeue_claims(now - self.stale_claim_after)
        overdue = await self._query_submitted(now - self.settings().query_after)
        # A stall found now lets its sends wait for the engine rather than fail (on_stall).
        await self._review_stalls(now)
        await self._fail_overdue(overdue, now)
        await self._fail_unserved(now)

    async def _review_stalls(self, now: float) -> None:
        for server in self.owned():
            engine_moved = False
            evidence = self.stalls.evidence.get(server)
            client = self.clients(server)
            if evidence is not None and client is not None:
                # The send that showed the stall, asked about again: with on_stall=move it is
                # nobody's any more, and only this shows the engine sending again.
                try:
                    reports = await client.query_sms(evidence.task_id)
                except UpstreamError as exc:
                    self.ctx.metrics.reconcile_queries.labels(server, exc.reason.value).inc()
                else:
                    self.ctx.metrics.reconcile_queries.labels(server, "ok").inc()
                    for report in reports:
                        if _bare(report.number) == _bare(evidence.number):
                            engine_moved = engine_moved or report.send != "unsend"
                            await apply_goip_report(self.ctx, server, report)
            await self.stalls.review(server, self.ctx.clock() if evidence else now, engine_moved)

    async def _fail_unserved(self, now: float) -> None:
        """Submitted sends of a server a reload removed: no instance polls or asks that server
        any more, so no report can come; past `report_deadline` they fail like a lost report,
        named for what happened. Every instance may do this: failing twice changes nothing."""
        deadline = self.settings().report_deadline
        while True:
            unserved = await self.ctx.ledger.submitted_not_of(
                list(self.ctx.servers()), now - deadline, BATCH
            )
            if not unserved:
                return
            await self.ctx.ledger.record(
                [
                    Outcome(
                        r.id,
                        State.FAILED,
                        error_code="server_removed",
                        error_meaning="its SMS Server was removed from the config before it "
                        "reported a send result",
                    )
                    for r in unserved
                ],
                now,
            )
            log.warning("reports_abandoned", recipients=len(unserved), reason="server_removed")
            if len(unserved) < BATCH:
                return

    async def _requeue_claims(self, own_older_than: float) -> None:
        settings = self.ctx.routing()
        while True:
            stale = await self.ctx.ledger.take_stale_claims(own_older_than, BATCH)
            if not stale:
                return
            by_server: dict[str, list[Recipient]] = {}
            for recipient in stale:
                by_server.setdefault(recipient.server or "", []).append(recipient)
            lost: list[Recipient] = []
            now = self.ctx.clock()
            for server, recipients in by_server.items():
                missing, proven = await self._adopt_tasks(server, recipients)
                # Unproven (no task of the server recorded to say where to look, or it did
                # not answer): the claims wait for the next sweep, up to the report deadline.
                lost.extend(
                    r
                    for r in missing
                    if proven == "proven" or now - r.updated_at > self.settings().report_deadline
                )
            if lost:
                outcomes = [
                    _after_lost_claim(
                        r, settings.max_attempts, now, retry_delay(settings, r.attempts)
                    )
                    for r in lost
                ]
                await self._retry_handovers(lost, settings.max_attempts, now)
                await self.ctx.ledger.record(outcomes, now)
                self.ctx.metrics.dispatch_ambiguous.inc(len(lost))
                log.warning("claims_requeued", recipients=len(lost))
                self.ctx.wake_dispatch()
            if len(stale) < BATCH:
                return

    async def _retry_handovers(self, lost: list[Recipient], max_attempts: int, now: float) -> None:
        """Interrupted hand-overs are handed over again soon, as a refused one is after its
        retry time (Dispatcher._requeue): the time is stored before they are queued again."""
        retries = {
            r.id: (r.attempts, now + LOST_CLAIM_RETRY)
            for r in lost
            if _handover(r, now) and r.attempts + 1 < max_attempts
        }
        if retries:
            await store_handover_retries(self.handovers, retries, now)

    async def _task_window(
        self, server: str, client: GoipClient, recipients: list[Recipient]
    ) -> tuple[int, int] | None:
        """[first, stop): the task ids where the interrupted sends' tasks can be; None if goipd
        never recorded a task of this server (then nothing tells where to look)."""
        claimed_from = min(r.updated_at for r in recipients) - CLOCK_SLACK
        # A task recorded after this was created after every interrupted call had ended.
        claimed_to = max(r.updated_at for r in recipients) + 2 * client.send_timeout + CLOCK_SLACK
        low, high = await self.ctx.ledger.task_id_bounds(server, claimed_from, claimed_to)
        if low is None:
            # Nothing recorded before the claims: they were among goipd's first sends here.
            _, earliest = await self.ctx.ledger.task_id_bounds(server, claimed_from, -1.0)
            if earliest is None:
                return None
            low = max(earliest - len(recipients) - TASK_SCAN_MARGIN, 0)
        stop = low + 1 + MAX_TASK_SCAN
        return low + 1, min(high, stop) if high is not None else stop

    async def _adopt_tasks(
        self, server: str, recipients: list[Recipient]
    ) -> tuple[list[Recipient], Search]:
        """Find the tasks the SMS Server created for interrupted sends; returns the rest, and
        whether their absence is proven (a server gone from the config counts as proven:
        nobody can ask it any more)."""
        client = self.clients(server)
        if client is None:
            return recipients, "proven"
        window = await self._task_window(server, client, recipients)
        if window is None:
            return recipients, "no_anchor"
        first, stop = window
        # Tasks goipd recorded are not interrupted ones: only the others are asked about.
        recorded = await self.ctx.ledger.recorded_task_ids(server, first, stop)
        last_recorded = max(recorded, default=first - 1)
        # GoIP reports carry the number, never the text: several claims may wait for one
        # number (messages to it claimed close together). Tasks are matched in id order to
        # claims in claim order, which is the order their sendsms calls started in.
        waiting: dict[str, list[Recipient]] = {}
        for recipient in sorted(recipients, key=lambda r: (r.updated_at, r.id)):
            waiting.setdefault(_bare(recipient.number), []).append(recipient)
        adopted: dict[int, tuple[int, SendReport]] = {}
        proven: Search = "proven"
        for task_id in range(first, stop):
            if not waiting:
                break
            if task_id in recorded:
                continue
            try:
                reports = await client.query_sms(str(task_id))
            except UpstreamError as exc:
                log.warning("claim_scan_failed", server=server, reason=exc.reason.value)
                proven = "unanswered"
                break
            if not reports and task_id > last_recorded:
                break  # ids are handed out in order: no task beyond this one exists yet
            for recipient, report in _match_task(reports, waiting):
                adopted[recipient.id] = (task_id, report)
        if adopted:
            # Another instance may have recorded one of these tasks for its own send (in flight
            # while this scan ran): that task is not an interrupted one, so its claims are
            # treated as not found.
            taken = await self.ctx.ledger.recorded_task_ids(server, first, stop)
            lost_race = {rid for rid, (task_id, _) in adopted.items() if task_id in taken}
            outcomes = [
                Outcome(
                    rid, State.SUBMITTED, task_id=report.task_id, upstream_id=report.sub_task_id
                )
                for rid, (_, report) in adopted.items()
                if rid not in lost_race
            ]
            if outcomes:
                await self.ctx.ledger.record(outcomes, self.ctx.clock())
                log.info("claims_adopted", server=server, recipients=len(outcomes))
            if lost_race:
                log.warning("claim_adoption_raced", server=server, recipients=len(lost_race))
            adopted = {rid: a for rid, a in adopted.items() if rid not in lost_race}
        return [r for r in recipients if r.id not in adopted], proven

    async def _query_submitted(self, older_than: float) -> list[Recipient]:
        """Ask about submitted sends of the servers this instance polls and apply the answers;
        returns those still `submitted` afterwards, for the deadline."""
        servers = self.owned()
        if not servers:
            return []
        submitted = await self.ctx.ledger.submitted_of(servers, older_than, BATCH)
        tasks: dict[tuple[str, str], list[Recipient]] = {}
        for recipient in submitted:
            if recipient.server and recipient.task_id:
                tasks.setdefault((recipient.server, recipient.task_id), []).append(recipient)
        waiting: list[Recipient] = []
        for (server, task_id), recipients in tasks.items():
            client = self.clients(server)
            if client is not None:
                try:
                    reports = await client.query_sms(task_id)
                except UpstreamError as exc:
                    self.ctx.metrics.reconcile_queries.labels(server, exc.reason.value).inc()
                    log.warning(
                        "reconcile_query_failed",
                        server=server,
                        task_id=task_id,
                        reason=exc.reason.value,
                        detail=exc.detail,
                    )
                else:
                    self.ctx.metrics.reconcile_queries.labels(server, "ok").inc()
                    for report in reports:
                        if report.send == "unsend":
                            for r in recipients:
                                if _bare(r.number) == _bare(report.number):
                                    self.stalls.saw_unsend(server, r)
                        await apply_goip_report(self.ctx, server, report)
            for r in recipients:
                found = await self.ctx.ledger.find_by_task(server, task_id, r.number)
                if found is not None and found.state is State.SUBMITTED:
                    waiting.append(found)
        return waiting

    async def _fail_overdue(self, waiting: list[Recipient], now: float) -> None:
        """Sends with no result past their deadline fail; their tasks are remembered, so if
        the server sends one after all it is counted (goipd_late_sends_total)."""
        deadline = self.settings().report_deadline
        by_server: dict[str, list[tuple[Recipient, str]]] = {}
        for r in waiting:
            assert r.server is not None
            due, code = self.stalls.deadline(r.server, r.submitted_at or r.updated_at, deadline)
            if now > due:
                by_server.setdefault(r.server, []).append((r, code))
        for server, overdue in by_server.items():
            await self.ctx.ledger.abandon_tasks(server, [r for r, _ in overdue], "failed", now)
            await self.ctx.ledger.record(
                [
                    Outcome(
                        r.id, State.FAILED, error_code=code, error_meaning=DEADLINE_MEANINGS[code]
                    )
                    for r, code in overdue
                ],
                now,
            )
            log.warning("reports_timed_out", server=server, recipients=len(overdue))


def _bare(number: str) -> str:
    # The SMS Server reports the number as it was sent, with or without the leading "+".
    return number.lstrip("+")


def _match_task(
    reports: list[SendReport], waiting: dict[str, list[Recipient]]
) -> list[tuple[Recipient, SendReport]]:
    """The waiting claims one task settles, removed from `waiting`. One sendsms call carries
    one message, so a task settles claims of a single message: the one waiting on most of the
    task's numbers, then the one with the oldest claim. A claim bound to a line is not settled
    by a task another line sent (the line is known once the task has left "unsend")."""

    def fits(recipient: Recipient, report: SendReport) -> bool:
        line = report.goip_line
        return recipient.line is None or line in (None, "null") or line == recipient.line

    candidates = [
        (recipient, report)
        for report in reports
        for recipient in waiting.get(_bare(report.number), [])
        if fits(recipient, report)
    ]
    if not candidates:
        return []
    covered: dict[str, set[str]] = {}
    oldest: dict[str, tuple[float, int]] = {}
    for recipient, report in candidates:
        covered.setdefault(recipient.message_id, set()).add(report.number)
        seen = oldest.get(recipient.message_id, (recipient.updated_at, recipient.id))
        oldest[recipient.message_id] = min(seen, (recipient.updated_at, recipient.id))
    # The batch sent as this task had all of the task's numbers: a message waiting on more of
    # them is the likelier sender; among equals, the oldest claim started its call first.
    message = min(covered, key=lambda m: (-len(covered[m]), oldest[m]))
    matched: list[tuple[Recipient, SendReport]] = []
    for report in reports:
        queue = waiting.get(_bare(report.number), [])
        # Oldest first: an older claim's send started earlier, so it got the lower task id.
        found = next((r for r in queue if r.message_id == message and fits(r, report)), None)
        if found is None:
            continue
        queue.remove(found)
        if not queue:
            del waiting[_bare(report.number)]
        matched.append((found, report))
    return matched


def _handover(recipient: Recipient, now: float) -> bool:
    """Only a hand-over to a provider that schedules sends is claimed before its time (its
    next_attempt_at, which a claim leaves alone, is its send_at)."""
    return recipient.next_attempt_at > now


def _after_lost_claim(recipient: Recipient, max_attempts: int, now: float, delay: float) -> Outcome:
    handover = _handover(recipient, now)
    # An interrupted hand-over is not failed before its time: the pass at its send_at still
    # has its own try (as after a refused hand-over).
    if recipient.attempts >= max_attempts and not handover:
        return Outcome(
            recipient.id,
            State.FAILED,
            error_code="claim_lost",
            error_meaning="send interrupted too often (crash during sendsms)",
        )
    return Outcome(
        recipient.id,
        State.QUEUED,
        error_code="claim_lost",
        error_meaning="send interrupted by a restart; sent again",
        # A hand-over keeps its send_at: queued for now, it would be sent at once, without
        # the provider's schedule.
        retry_at=max(now + min(delay, LOST_CLAIM_RETRY), recipient.next_attempt_at),
    )
