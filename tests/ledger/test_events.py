"""Status callback events in the ledger (the `StatusEvents` role), on both backends: every
state change a message asked for becomes one event in the same transaction, whatever changes
it (record, cancel, expire); none for other messages or states; taken events are claimed
(also against a second instance on one PostgreSQL), settled, expired and capped per receiver,
and event ids never come back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from goipd.callbacks.targets import receiver_key
from goipd.ledger.events import StatusEvent
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import Claim, NewMessage, Outcome, Recipient, State
from tests.helpers.ledgers import BACKENDS, NOW, PG_URL, open_backend

Ledger = SqliteLedger | PostgresLedger
URL = "https://Hooks.Example.com:8443/goipd/status?token=abc"
RECEIVER = "https://hooks.example.com:8443"
ALL = "submitted,sent,delivered,failed,cancelled,expired"

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


def message(
    numbers: tuple[str, ...] = ("+886912345678",),
    *,
    url: str | None = URL,
    events: str | None = ALL,
    send_at: float | None = None,
    expires_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        text="hello",
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        send_at=send_at,
        expires_at=expires_at,
        status_url=url,
        status_events=events,
    )


async def accept(store: Ledger, new: NewMessage) -> list[int]:
    result = await store.accept(new, NOW)
    return [r.id for r in result.message.recipients]


async def all_events(store: Ledger) -> list[StatusEvent]:
    return await store.take_status_events(NOW + 10**6, 60.0, 1000, 1000)


async def test_each_public_state_change_asked_for_is_one_event(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        [rid] = await accept(store, message())
        await store.claim([Claim(rid, "goip", "taipei", "3")], NOW + 1)  # dispatching: none
        await store.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW + 2)
        await store.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW + 2.5)  # no change
        await store.record([Outcome(rid, State.SENT)], NOW + 3)
        await store.record(
            [Outcome(rid, State.DELIVERED, error_code="DELIVRD", error_meaning="ok")], NOW + 4
        )
        events = await all_events(store)
        assert [(e.state, e.at) for e in events] == [
            ("submitted", NOW + 2),
            ("sent", NOW + 3),
            ("delivered", NOW + 4),
        ]
        first = events[0]
        assert (first.recipient_id, first.number, first.url, first.receiver) == (
            rid,
            "+886912345678",
            URL,
            RECEIVER,
        )
        assert (first.route, first.server, first.line, first.attempts) == ("goip", "taipei", "3", 0)
        assert events[2].error_code == "DELIVRD"
        assert len({e.id for e in events}) == 3


async def test_state_changes_recorded_together_are_one_event_each(
    backend: str, tmp_path: Path
) -> None:
    # Callers whose writes share a group commit: each change is still its own event, not only
    # the last state of the recipient.
    async with open_backend(backend, tmp_path) as store:
        [rid] = await accept(store, message())
        await store.claim([Claim(rid, "goip", "taipei", "3")], NOW + 1)
        await asyncio.gather(
            store.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW + 2),
            store.record([Outcome(rid, State.SENT)], NOW + 3),
            store.record([Outcome(rid, State.DELIVERED)], NOW + 4),
        )
        events = await all_events(store)
        assert [(e.state, e.at) for e in events] == [
            ("submitted", NOW + 2),
            ("sent", NOW + 3),
            ("delivered", NOW + 4),
        ]


async def test_reports_on_one_recipient_applied_together_are_one_event_each(
    backend: str, tmp_path: Path
) -> None:
    # A send result and then its receipt for one task, in one group commit (PostgreSQL merges
    # the reports of a batch into one UPDATE per set of columns).
    async with open_backend(backend, tmp_path) as store:
        [rid] = await accept(store, message())
        await store.claim([Claim(rid, "goip", "taipei", "3")], NOW + 1)
        await store.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW + 2)

        def to(state: State) -> Callable[[Recipient], tuple[Outcome | None, None]]:
            return lambda recipient: (Outcome(recipient.id, state), None)

        await asyncio.gather(
            store.apply_to_task("taipei", "7", "+886912345678", NOW + 3, to(State.SENT)),
            store.apply_to_task("taipei", "7", "+886912345678", NOW + 4, to(State.SENT)),
            store.apply_to_task("taipei", "7", "+886912345678", NOW + 5, to(State.DELIVERED)),
        )
        events = await all_events(store)
        assert [(e.state, e.at) for e in events] == [
            ("submitted", NOW + 2),
            ("sent", NOW + 3),
            ("delivered", NOW + 5),
        ]


async def test_failed_cancelled_and_expired_come_from_every_path(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        failing, _ = await accept(store, message(("+886912000001", "+886912000002")))
        await store.claim([Claim(failing, "goip", "taipei", "1")], NOW)
        await store.record([Outcome(failing, State.FAILED, error_code="9")], NOW + 1)
        scheduled = (await store.accept(message(send_at=NOW + 3600), NOW)).message
        await store.cancel(scheduled.id, NOW + 2)
        await accept(store, message(("+886912000003",), expires_at=NOW + 5))
        assert await store.expire(NOW + 6, 100) == 1
        states = sorted(e.state for e in await all_events(store))
        assert states == ["cancelled", "expired", "failed"]


async def test_no_event_without_a_url_or_for_a_state_not_asked_for(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        [plain] = await accept(store, message(url=None, events=None))
        [picky] = await accept(store, message(events="delivered,failed"))
        [default] = await accept(store, message(events=None))  # no list: the default set
        for rid in (plain, picky, default):
            await store.claim([Claim(rid, "smsgo", None, None)], NOW)
            await store.record([Outcome(rid, State.SUBMITTED, upstream_id=f"u{rid}")], NOW)
            await store.record([Outcome(rid, State.SENT)], NOW + 1)
        events = await all_events(store)
        assert [(e.recipient_id, e.state) for e in events] == [(default, "sent")]
        assert events[0].route == "smsgo"


async def test_taking_claims_an_event_until_settled_or_its_claim_runs_out(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        accepted = (await store.accept(message(("+886912000001", "+886912000002")), NOW)).message
        a, b = (r.id for r in accepted.recipients)
        await store.cancel(accepted.id, NOW)
        taken = await store.take_status_events(NOW, 30.0, 10, 10)
        assert {e.recipient_id for e in taken} == {a, b}
        assert await store.take_status_events(NOW + 1, 30.0, 10, 10) == []  # claimed
        await store.settle_status_events([taken[0].id], [(taken[1].id, NOW + 5, "HTTP 500")])
        assert await store.take_status_events(NOW + 4, 30.0, 10, 10) == []  # not due yet
        [again] = await store.take_status_events(NOW + 5, 30.0, 10, 10)
        assert (again.id, again.attempts) == (taken[1].id, 1)
        # The process dies holding it: taken again once the claim ran out...
        assert await store.take_status_events(NOW + 34, 30.0, 10, 10) == []
        assert [e.id for e in await store.take_status_events(NOW + 35, 30.0, 10, 10)] == [again.id]
        # ...or at once after this instance's restart released its claims.
        assert await store.release_status_events() == 1
        assert len(await store.take_status_events(NOW + 36, 30.0, 10, 10)) == 1
        assert await store.status_events_pending() == {RECEIVER: 1}


async def test_taking_limits_per_receiver_and_skips_receivers_in_back_off(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        numbers = tuple(f"+8869120000{i:02d}" for i in range(6))
        first = (await store.accept(message(numbers), NOW)).message
        other = "http://other.example:80/x"
        second = (await store.accept(message(numbers[:2], url=other), NOW)).message
        await store.cancel(first.id, NOW)
        await store.cancel(second.id, NOW)
        assert await store.status_events_pending() == {RECEIVER: 6, receiver_key(other): 2}
        taken = await store.take_status_events(NOW, 30.0, 10, 2)
        assert sorted(e.receiver for e in taken) == [receiver_key(other)] * 2 + [RECEIVER] * 2
        more = await store.take_status_events(NOW, 30.0, 10, 3, {receiver_key(other)})
        assert [e.receiver for e in more] == [RECEIVER] * 3
        assert len(await store.take_status_events(NOW, 30.0, 1, 10)) == 1


async def test_old_events_expire_and_a_receiver_keeps_only_its_newest(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        numbers = tuple(f"+8869120000{i:02d}" for i in range(5))
        old = (await store.accept(message(numbers[:2]), NOW)).message
        await store.cancel(old.id, NOW)
        new = (await store.accept(message(numbers), NOW)).message
        await store.cancel(new.id, NOW + 100)
        assert await store.expire_status_events(NOW + 50, NOW + 200) == {RECEIVER: 2}
        assert await store.expire_status_events(NOW + 50, NOW + 200) == {}
        assert await store.cap_status_events(3, NOW + 200) == {RECEIVER: 2}
        left = await all_events(store)
        assert [e.number for e in left] == list(numbers[2:])  # the oldest went
        assert await store.cap_status_events(3, NOW + 200) == {}


async def test_event_ids_never_come_back(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        [a] = await accept(store, message())
        await store.record([Outcome(a, State.FAILED)], NOW)
        [first] = await all_events(store)
        await store.settle_status_events([first.id])
        [b] = await accept(store, message(("+886912000009",)))
        await store.record([Outcome(b, State.FAILED)], NOW)
        [second] = await all_events(store)
        assert second.id > first.id


async def test_two_instances_taking_at_once_take_other_events(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        pytest.skip("one process per SQLite ledger")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with open_backend(backend, tmp_path, schema) as one:
        try:
            async with open_backend(backend, tmp_path, schema) as two:
                assert isinstance(one, PostgresLedger) and isinstance(two, PostgresLedger)
                one.instance_id, two.instance_id = "one", "two"
                numbers = tuple(f"+88691200{i:04d}" for i in range(40))
                msg = (await one.accept(message(numbers), NOW)).message
                await one.cancel(msg.id, NOW)
                for _ in range(5):
                    a, b = await asyncio.gather(
                        one.take_status_events(NOW, 30.0, 8, 100),
                        two.take_status_events(NOW, 30.0, 8, 100),
                    )
                    assert not {e.id for e in a} & {e.id for e in b}
                assert await one.take_status_events(NOW, 30.0, 8, 100) == []
        finally:
            await PostgresLedger(PG_URL, schema=schema).drop_schema()


async def test_events_being_delivered_are_neither_expired_nor_capped(
    backend: str, tmp_path: Path
) -> None:
    """Their delivery settles them: dropped under it, one event would be counted twice."""
    async with open_backend(backend, tmp_path) as store:
        numbers = tuple(f"+8869120000{i:02d}" for i in range(4))
        old = (await store.accept(message(numbers), NOW)).message
        await store.cancel(old.id, NOW)
        taken = await store.take_status_events(NOW + 100, 30.0, 2, 10)
        assert len(taken) == 2
        # Claimed until NOW + 130: only the two not taken go.
        assert await store.expire_status_events(NOW + 50, NOW + 110) == {RECEIVER: 2}
        assert await store.cap_status_events(0, NOW + 110) == {}
        assert await store.status_events_pending() == {RECEIVER: 2}
        # Once their claim ran out (the instance died), they go like any other.
        assert await store.cap_status_events(1, NOW + 131) == {RECEIVER: 1}
