"""A stalled SMS Server engine: found from what querysms says, acted on as the server's setting
says (docs/real-sms-server.md#a-stalled-engine).

Only the engine (goipcron) sends SMS and writes the lines' state. When it dies the SMS Server
still looks healthy: querylines shows every line online and LOGIN, sendsms still ACCEPTs (late),
and nothing is sent. What gives it away is that the sends it accepted stay `unsend`.

A server is **stalled** when a send it accepted at least `stall_after` ago is still `unsend`
(querysms, asked by the reconciler) and none of the server's sends was reported sent, or failed
with the server's own error code, in the last `stall_after`. One slow line is not a stall: the
other lines' sends move on. Routing then leaves the server alone (dispatch holds it like a
server whose sends are being verified), and `on_stall` decides about the sends it holds:

- `wait`: they stay with the server, whose engine sends them when it returns, up to a day
  after they were queued (it drops older ones); they fail as `engine_stalled` only after that.
- `move`: they go back to goipd's queue for another route, each counted ambiguous, and their
  tasks are remembered: if the engine returns and sends one anyway, it is counted
  (`goipd_late_sends_total{after="moved"}`).

The stall ends once anything shows the engine working: a report of one of the server's sends
moving on, the oldest stuck task moving on when asked again, or a line's state changing in
querylines (a restarted engine marks every line offline until its next keepalive).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from goipd.config import RoutingSettings, Server
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import Reporting
from goipd.metrics.catalog import Metrics
from goipd.model import Outcome, Recipient, State, whole_server

log = structlog.get_logger("goipd.reports.stalls")
ENGINE_KEEPS = 86400.0
"""Seconds the engine keeps an unsent task: a returning engine sends nothing queued earlier."""
ENGINE_STALLED = "engine_stalled"
SERVER_STALLED = "server_stalled"
MOVE_BATCH = 500


@dataclass(frozen=True, slots=True)
class Stuck:
    """A send the server accepted that querysms still shows `unsend`."""

    task_id: str
    number: str
    handed_at: float


class StallWatch:
    def __init__(
        self,
        ledger: Reporting,
        registry: LineRegistry,
        metrics: Metrics,
        servers: Callable[[], Mapping[str, Server]],
        routing: Callable[[], RoutingSettings],
        wake_dispatch: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.metrics = metrics
        self.servers = servers
        self.routing = routing
        self.wake_dispatch = wake_dispatch
        self._oldest: dict[str, Stuck] = {}
        """Per server, the oldest send a sweep found still `unsend`."""
        self.evidence: dict[str, Stuck] = {}
        """Per stalled server, the stuck send that showed the stall: asked about again."""
        self.ended: dict[str, float] = {}
        """When each server's last stall ended: what it held gets its results from then on."""

    def stalled(self) -> set[str]:
        """Stalled servers, found here or (on the other instances) copied from a snapshot."""
        return {n for n, s in self.registry.servers.items() if s.stalled_since is not None}

    def saw_unsend(self, server: str, recipient: Recipient) -> None:
        handed_at = recipient.submitted_at or recipient.updated_at
        oldest = self._oldest.get(server)
        if recipient.task_id is not None and (oldest is None or handed_at < oldest.handed_at):
            self._oldest[server] = Stuck(recipient.task_id, recipient.number, handed_at)

    def deadline(self, server: str, handed_at: float, report_deadline: float) -> tuple[float, str]:
        """By when a send handed to `server` at `handed_at` must have its result, and the code
        it fails with after that. With on_stall=wait, what a stalled server holds waits for its
        engine (a day at most, as the engine keeps it), and after the stall it gets the usual
        deadline counted from the stall's end: a returning engine sends it a little later."""
        config = self.servers().get(server)
        state = self.registry.servers.get(server)
        if config is not None and config.on_stall == "wait" and state is not None:
            if state.stalled_since is not None:
                return handed_at + max(report_deadline, ENGINE_KEEPS), ENGINE_STALLED
            ended = self.ended.get(server)
            if ended is not None and handed_at < ended:
                latest = handed_at + max(report_deadline, ENGINE_KEEPS)
                return min(ended + report_deadline, latest), ENGINE_STALLED
        return handed_at + report_deadline, "report_timeout"

    async def review(self, server: str, now: float, engine_moved: bool = False) -> None:
        """After a reconcile sweep: find a stall of `server`, or its end. `engine_moved`: the
        stuck task asked about again is no longer `unsend`."""
        config = self.servers().get(server)
        state = self.registry.servers.get(server)
        oldest = self._oldest.pop(server, None)
        if config is None or state is None:
            return
        horizon = max(600.0, 4 * config.stall_after)
        if state.stalled_since is None:
            # Sends after the stuck one that move on show a busy line, not a stalled engine.
            if (
                oldest is not None
                and now - oldest.handed_at >= config.stall_after
                and not await self.ledger.progress_since(
                    server, now - config.stall_after, now - horizon
                )
            ):
                waited = now - oldest.handed_at
                self.registry.mark_stalled(
                    server, now, f"task {oldest.task_id} unsend for {waited:.0f}s, no send moved on"
                )
                self.evidence[server] = oldest
        else:
            evidence = self.evidence.get(server, oldest)
            handed_after = (evidence.handed_at if evidence else state.stalled_since) - horizon
            if engine_moved or await self.ledger.progress_since(
                server, state.stalled_since, handed_after
            ):
                self.registry.clear_stall(server, now, "its sends move on")
        if state.stalled_since is not None:
            if config.on_stall == "move":
                await self._move(server, now)
        elif self.evidence.pop(server, None) is not None:
            # Ended here, or by the registry when the lines' state changed.
            self.ended[server] = now
            self.wake_dispatch()

    async def _move(self, server: str, now: float) -> None:
        """The sends the stalled server holds go back to the queue for other routes; their
        tasks are remembered first, so a report on one after a crash here is still counted."""
        stuck = await self.ledger.submitted_of([server], now + 1.0, MOVE_BATCH)
        if not stuck:
            return
        max_attempts = self.routing().max_attempts
        worn = [r for r in stuck if r.attempts >= max_attempts]
        await self.ledger.abandon_tasks(server, worn, "failed", now)
        await self.ledger.abandon_tasks(
            server, [r for r in stuck if r.attempts < max_attempts], "moved", now
        )
        meaning = (
            "its SMS Server's engine stalled: moved to another route (sent twice if the engine "
            "returns within a day and sends it too)"
        )
        await self.ledger.record(
            [
                Outcome(r.id, State.FAILED, error_code=SERVER_STALLED, error_meaning=meaning)
                if r.attempts >= max_attempts
                else Outcome(
                    r.id,
                    State.QUEUED,
                    error_code=SERVER_STALLED,
                    error_meaning=meaning,
                    retry_at=now,
                    exclude_line=whole_server(server),
                )
                for r in stuck
            ],
            now,
        )
        # Only the moved ones may go out twice; the worn ones are never sent again.
        self.metrics.dispatch_ambiguous.inc(len(stuck) - len(worn))
        log.warning(
            "stalled_sends_moved",
            server=server,
            recipients=len(stuck) - len(worn),
            failed=len(worn),
        )
        self.wake_dispatch()
