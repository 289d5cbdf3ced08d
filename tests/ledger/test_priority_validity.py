"""Priority and validity in the ledger, on both backends: due recipients come highest priority
first and, within one priority, oldest first, whatever the queue behind them; a recipient past
its validity is never claimed, expires (with its reason) however it waits, and once handed to
an upstream never expires; what a message asked for reads back as stored, also after a
reopen."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from goipd.ledger.postgres import PostgresLedger
from goipd.model import EXPIRED_CODE, Claim, Outcome, State
from tests.helpers.ledgers import BACKENDS, NOW, PG_URL, new, open_backend

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


def numbers(start: int, count: int) -> tuple[str, ...]:
    return tuple(f"+8869{start + i:08d}" for i in range(count))


async def test_due_is_highest_priority_first_then_oldest_first(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as ledger:
        bulk = (await ledger.accept(new(numbers(0, 300), priority=0), NOW - 30)).message
        normal = (await ledger.accept(new(numbers(1000, 3)), NOW - 20)).message
        urgent = (await ledger.accept(new(numbers(2000, 2), priority=3), NOW - 1)).message
        high_old = (await ledger.accept(new(numbers(3000, 1), priority=2), NOW - 25)).message
        high_new = (await ledger.accept(new(numbers(4000, 1), priority=2), NOW - 5)).message
        later = await ledger.accept(new(numbers(5000, 1), send_at=NOW + 60, priority=3), NOW)
        due = await ledger.due(NOW, 10)
        assert [r.message_id for r in due] == [
            urgent.id,
            urgent.id,
            high_old.id,
            high_new.id,
            normal.id,
            normal.id,
            normal.id,
            bulk.id,
            bulk.id,
            bulk.id,
        ]
        # Within one priority, first in first out (recipient order of one message kept).
        assert [r.number for r in due[-3:]] == list(numbers(0, 3))
        # A limit cuts from the lowest priority; a scheduled recipient waits for its time.
        assert [r.message_id for r in await ledger.due(NOW, 2)] == [urgent.id, urgent.id]
        assert later.message.id not in {r.message_id for r in await ledger.due(NOW, 400)}
        # Its time come, it goes before every lower priority, behind the older urgent ones.
        assert [r.message_id for r in await ledger.due(NOW + 60, 4)] == [
            urgent.id,
            urgent.id,
            later.message.id,
            high_old.id,
        ]
        message = await ledger.get_message(urgent.id)
        assert message is not None and message.priority == 3
        assert (await ledger.get_message(bulk.id)).priority == 0  # type: ignore[union-attr]


async def test_a_recipient_past_its_validity_is_never_claimed(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as ledger:
        message = (await ledger.accept(new(numbers(0, 2), expires_at=NOW + 60), NOW)).message
        assert all(r.expires_at == NOW + 60 for r in message.recipients)
        first, second = (r.id for r in message.recipients)
        assert await ledger.claim([Claim(first, "goip", "hq", "G1")], NOW + 59) == [first]
        assert await ledger.claim([Claim(second, "goip", "hq", "G1")], NOW + 60) == []
        stored = await ledger.get_message(message.id)
        assert stored is not None and stored.expires_at == NOW + 60
        assert [r.state for r in stored.recipients] == [State.DISPATCHING, State.QUEUED]


async def test_expire_takes_queued_recipients_past_their_validity_only(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as ledger:
        soon = (await ledger.accept(new(numbers(0, 3), expires_at=NOW + 10), NOW)).message
        late = (await ledger.accept(new(numbers(100, 1), expires_at=NOW + 100), NOW)).message
        never = (await ledger.accept(new(numbers(200, 1)), NOW)).message
        waiting, handed, claimed = (r.id for r in soon.recipients)
        # One waits for a retry (not due), one was handed to an upstream, one is being sent.
        await ledger.claim([Claim(waiting, "goip", "hq", "G1")], NOW)
        await ledger.record([Outcome(waiting, State.QUEUED, retry_at=NOW + 50)], NOW)
        await ledger.claim([Claim(handed, "goip", "hq", "G1")], NOW)
        await ledger.record([Outcome(handed, State.SUBMITTED, task_id="1")], NOW)
        await ledger.claim([Claim(claimed, "goip", "hq", "G1")], NOW)
        assert await ledger.expire(NOW + 9, 100) == 0
        assert await ledger.expire(NOW + 10, 100) == 1
        after = await ledger.get_message(soon.id)
        assert after is not None
        by_id = {r.id: r for r in after.recipients}
        assert by_id[waiting].state is State.EXPIRED
        assert by_id[waiting].error_code == EXPIRED_CODE
        assert by_id[waiting].updated_at == NOW + 10
        assert by_id[handed].state is State.SUBMITTED
        assert by_id[claimed].state is State.DISPATCHING
        # Once submitted, an expiry outcome changes nothing; while dispatching, it applies.
        await ledger.record(
            [Outcome(handed, State.EXPIRED), Outcome(claimed, State.EXPIRED)], NOW + 11
        )
        after = await ledger.get_message(soon.id)
        assert after is not None
        assert [r.state for r in after.recipients] == [
            State.EXPIRED,
            State.SUBMITTED,
            State.EXPIRED,
        ]
        assert await ledger.expire(NOW + 1000, 100) == 1
        assert (await ledger.get_message(late.id)).recipients[0].state is State.EXPIRED  # type: ignore[union-attr]
        assert (await ledger.get_message(never.id)).recipients[0].state is State.QUEUED  # type: ignore[union-attr]
        counts = await ledger.counts()
        assert counts[State.EXPIRED] == 3


async def test_expire_is_bounded_by_its_limit(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as ledger:
        await ledger.accept(new(numbers(0, 5), expires_at=NOW + 1), NOW)
        assert await ledger.expire(NOW + 2, 3) == 3
        assert await ledger.expire(NOW + 2, 3) == 2
        assert await ledger.expire(NOW + 2, 3) == 0


async def test_what_a_message_asked_for_survives_a_reopen(backend: str, tmp_path: Path) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with open_backend(backend, tmp_path, schema if backend != "sqlite" else None) as ledger:
        asked = replace(
            new(numbers(0, 1), priority=2, expires_at=NOW + 300),
            status_url="https://app.example/sms?k=1",
            status_events="sent,failed",
        )
        message_id = (await ledger.accept(asked, NOW)).message.id
    try:
        async with open_backend(
            backend, tmp_path, schema if backend != "sqlite" else None
        ) as ledger:
            message = await ledger.get_message(message_id)
            assert message is not None
            assert (message.priority, message.expires_at) == (2, NOW + 300)
            assert message.status_url == "https://app.example/sms?k=1"
            assert message.status_events == "sent,failed"
            assert message.recipients[0].expires_at == NOW + 300
    finally:
        if backend != "sqlite":
            await PostgresLedger(PG_URL, schema=schema).drop_schema()
