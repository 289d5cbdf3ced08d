"""Finding a stalled SMS Server engine and acting on it, on a real SQLite ledger: what querysms
said is given to the watch as the reconciler gives it; the whole loop against the simulator is
in tests/system/test_engine_stall.py."""

from __future__ import annotations

from dataclasses import replace

from pydantic import SecretStr

from goipd.config import RoutingSettings, Server
from goipd.fleet.registry import LineRegistry
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, Outcome, Recipient, State
from goipd.reports.goip import GoipContext, apply_goip_report
from goipd.reports.stalls import ENGINE_KEEPS, StallWatch
from goipd.upstream.goip import LineStatus, SendReport
from tests.helpers.ledgers import NOW, new

HQ = "hq"


def config(on_stall: str = "wait") -> Server:
    return replace(
        Server(HQ, "http://127.0.0.1/hq", "root", SecretStr("pw"), 15.0, 5.0, None, (), {}),
        on_stall=on_stall,  # type: ignore[arg-type]
    )


class Fleet:
    def __init__(self, ledger: SqliteLedger, on_stall: str = "wait") -> None:
        self.ledger = ledger
        self.registry = LineRegistry([HQ])
        self.registry.apply_poll(HQ, [LineStatus("G101", True, True, "LOGIN", None, None)], NOW)
        self.metrics = Metrics()
        self.servers = {HQ: config(on_stall)}
        self.woken = 0
        self.watch = StallWatch(
            ledger, self.registry, self.metrics, lambda: self.servers, RoutingSettings, self.wake
        )

    def wake(self) -> None:
        self.woken += 1

    def stalled(self) -> bool:
        return self.registry.servers[HQ].stalled_since is not None

    async def handed(self, task: str, at: float, attempts: int = 1) -> Recipient:
        message = (await self.ledger.accept(new(text=task), at)).message
        rid = message.recipients[0].id
        for attempt in range(1, attempts + 1):
            await self.ledger.claim([Claim(rid, "goip", HQ, "G101")], at)
            if attempt < attempts:  # an earlier send whose result made it go round again
                await self.ledger.record([Outcome(rid, State.QUEUED, retry_at=at)], at)
        await self.ledger.record([Outcome(rid, State.SUBMITTED, task_id=task)], at)
        found = await self.ledger.find_by_task(HQ, task, "+886912345678")
        assert found is not None
        return found

    async def sweep(self, now: float, *unsend: Recipient, moved: bool = False) -> None:
        for recipient in unsend:
            self.watch.saw_unsend(HQ, recipient)
        await self.watch.review(HQ, now, moved)


async def test_sends_unsend_past_stall_after_with_nothing_moving_stall_the_server(
    ledger: SqliteLedger,
) -> None:
    fleet = Fleet(ledger)
    stuck = await fleet.handed("100", NOW)
    await fleet.sweep(NOW + 119, stuck)
    assert not fleet.stalled()
    await fleet.sweep(NOW + 121, stuck)
    assert fleet.stalled()
    assert "task 100 unsend for 121s" in (fleet.registry.servers[HQ].stall_detail or "")
    assert fleet.watch.stalled() == {HQ}
    # wait: the sends stay with the server, for as long as its engine keeps them.
    assert fleet.watch.deadline(HQ, NOW, 3600.0) == (NOW + ENGINE_KEEPS, "engine_stalled")
    assert (await ledger.find_by_task(HQ, "100", "+886912345678")).state is State.SUBMITTED  # type: ignore[union-attr]


async def test_one_slow_line_is_not_a_stall(ledger: SqliteLedger) -> None:
    fleet = Fleet(ledger)
    stuck = await fleet.handed("100", NOW)
    later = await fleet.handed("101", NOW + 30)
    await ledger.record([Outcome(later.id, State.SENT)], NOW + 100)
    await fleet.sweep(NOW + 200, stuck)
    assert not fleet.stalled()
    # Nothing moved for stall_after: now it is one.
    await fleet.sweep(NOW + 221, stuck)
    assert fleet.stalled()


async def test_the_stall_ends_when_a_send_moves_on(ledger: SqliteLedger) -> None:
    fleet = Fleet(ledger)
    stuck = await fleet.handed("100", NOW)
    await fleet.sweep(NOW + 130, stuck)
    assert fleet.stalled()
    await fleet.sweep(NOW + 160, stuck)
    assert fleet.stalled()
    woken = fleet.woken
    await ledger.record([Outcome(stuck.id, State.SENT)], NOW + 170)
    await fleet.sweep(NOW + 190)
    assert not fleet.stalled() and fleet.woken > woken
    # What the server held gets the usual deadline from the stall's end: the returning engine
    # sends it a little later. What it takes from now on is as before.
    assert fleet.watch.deadline(HQ, NOW, 3600.0) == (NOW + 190 + 3600.0, "engine_stalled")
    assert fleet.watch.deadline(HQ, NOW + 200, 3600.0) == (NOW + 3800.0, "report_timeout")


async def test_the_stall_ends_when_the_stuck_task_moved_or_lines_change(
    ledger: SqliteLedger,
) -> None:
    fleet = Fleet(ledger)
    stuck = await fleet.handed("100", NOW)
    await fleet.sweep(NOW + 130, stuck)
    await fleet.sweep(NOW + 160, moved=True)
    assert not fleet.stalled()
    await fleet.sweep(NOW + 300, stuck)
    assert fleet.stalled()
    # A restarted engine marks the lines offline: only the engine writes them.
    fleet.registry.apply_poll(HQ, [LineStatus("G101", False, False, "", None, None)], NOW + 301)
    assert not fleet.stalled()
    await fleet.sweep(NOW + 310)
    assert HQ not in fleet.watch.evidence


async def test_move_requeues_what_the_server_holds_and_remembers_its_tasks(
    ledger: SqliteLedger,
) -> None:
    fleet = Fleet(ledger, on_stall="move")
    stuck = await fleet.handed("100", NOW)
    worn = await fleet.handed("101", NOW + 1, attempts=RoutingSettings().max_attempts)
    await fleet.sweep(NOW + 130, stuck)
    assert fleet.stalled()
    moved = await ledger.find_by_task(HQ, "100", "+886912345678")
    assert moved is not None and moved.state is State.QUEUED
    assert moved.error_code == "server_stalled" and "hq/*" in moved.excluded_lines
    failed = await ledger.find_by_task(HQ, "101", "+886912345678")
    assert failed is not None and failed.state is State.FAILED
    assert fleet.metrics.dispatch_ambiguous._value.get() == 1  # the worn one is not resent
    assert await ledger.late_send(HQ, "100", "886912345678") == (stuck.id, "moved")
    assert await ledger.late_send(HQ, "101", "886912345678") == (worn.id, "failed")
    assert fleet.watch.deadline(HQ, NOW, 3600.0) == (NOW + 3600.0, "report_timeout")


async def test_a_late_send_of_a_moved_or_failed_recipient_is_counted(
    ledger: SqliteLedger,
) -> None:
    fleet = Fleet(ledger, on_stall="move")
    stuck = await fleet.handed("100", NOW)
    still_queued = await fleet.handed("300", NOW)
    await fleet.sweep(NOW + 130, stuck)
    # Moved and already handed to another server (a claim forgets the old task).
    assert await ledger.claim([Claim(stuck.id, "goip", "branch", "G1")], NOW + 131)
    timed_out = await fleet.handed("200", NOW + 140)
    await ledger.abandon_tasks(HQ, [timed_out], "failed", NOW)
    await ledger.record([Outcome(timed_out.id, State.FAILED, error_code="report_timeout")], NOW)
    ctx = GoipContext(
        servers=lambda: fleet.servers,
        ledger=ledger,
        registry=fleet.registry,
        metrics=fleet.metrics,
        routing=RoutingSettings,
        forward_urls=lambda: (),
        wake_dispatch=fleet.wake,
        clock=lambda: NOW + 200,
    )

    def report(task: str, send: str) -> SendReport:
        return SendReport(f"{task}.886912345678", task, "886912345678", "G101", send, None, False)  # type: ignore[arg-type]

    assert await apply_goip_report(ctx, HQ, report("100", "sending")) == "unknown_task"
    assert await apply_goip_report(ctx, HQ, report("100", "succeeded")) == "ok"
    assert await apply_goip_report(ctx, HQ, report("200", "succeeded")) == "ok"
    # The delivery receipt's report of the same sends: not counted again.
    assert await apply_goip_report(ctx, HQ, report("100", "succeeded")) == "unknown_task"
    assert await apply_goip_report(ctx, HQ, report("200", "succeeded")) == "ok"
    assert await apply_goip_report(ctx, HQ, report("999", "succeeded")) == "unknown_task"
    # Moved but not sent elsewhere yet: the server's send is the one, nothing goes twice.
    assert await apply_goip_report(ctx, HQ, report("300", "succeeded")) == "ok"
    assert (await ledger.find_by_task(HQ, "300", "+886912345678")).state is State.SENT  # type: ignore[union-attr]
    assert still_queued.state is State.SUBMITTED
    assert fleet.metrics.late_sends.labels(HQ, "moved")._value.get() == 1
    assert fleet.metrics.late_sends.labels(HQ, "failed")._value.get() == 1
    # The recipients' own records stay as goipd left them.
    assert (await ledger.find_by_task(HQ, "200", "+886912345678")).state is State.FAILED  # type: ignore[union-attr]
