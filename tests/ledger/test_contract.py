"""Both ledger backends against one interface: durability, group commit, idempotency, the
monotonic state machine (a recipient never moves backwards or out of a final state), inbound
SMS and line quarantines. The PostgreSQL runs use the real server on 127.0.0.1:5432, one schema
per test, dropped after.

What only one backend does is in test_sqlite.py, test_migrations.py, test_postgres.py and
test_postgres_reconnect.py."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from goipd.model import (
    FINAL_STATES,
    RANK,
    Claim,
    GoipInbound,
    LedgerError,
    LineQuarantine,
    Message,
    NewMessage,
    Outcome,
    Recipient,
    State,
)
from tests.helpers.ledgers import NOW, PG_URL, new

Ledger = SqliteLedger | PostgresLedger

MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


@pytest.fixture
def make_ledger(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Ledger]:
    schema = f"test_{uuid.uuid4().hex[:12]}"

    def make() -> Ledger:
        if request.param == "sqlite":
            return SqliteLedger(tmp_path / "state" / "goipd.db")
        return PostgresLedger(PG_URL, schema=schema)

    return make


@pytest.fixture
async def ledger(make_ledger: Callable[[], Ledger]) -> AsyncIterator[Ledger]:
    store = make_ledger()
    await store.open()
    yield store
    await store.close()
    if isinstance(store, PostgresLedger):
        await store.drop_schema()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make_ledger" in metafunc.fixturenames:
        metafunc.parametrize("make_ledger", ["sqlite", "postgresql"], indirect=True)


async def only_recipient(ledger: Ledger, message_id: str) -> Recipient:
    message = await ledger.get_message(message_id)
    assert message is not None
    (r,) = message.recipients
    return r


async def state_of(ledger: Ledger, message_id: str) -> State:
    return (await only_recipient(ledger, message_id)).state


# --- accepting -------------------------------------------------------------------------------


async def test_accept_get_and_reopen(ledger: Ledger, make_ledger: Callable[[], Ledger]) -> None:
    result = await ledger.accept(new(("+886912345678", "+886912345679")), NOW)
    assert result.created
    assert MESSAGE_ID.match(result.message.id)
    message = await ledger.get_message(result.message.id)
    assert message == result.message
    assert [r.state for r in message.recipients] == [State.QUEUED, State.QUEUED]
    assert [r.next_attempt_at for r in message.recipients] == [NOW, NOW]
    assert await ledger.get_message("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None
    await ledger.close()
    again = make_ledger()
    await again.open()
    assert await again.get_message(result.message.id) == message
    await again.close()


async def test_message_bodies_in_one_read(ledger: Ledger) -> None:
    plain = (await ledger.accept(new(text="plain"), NOW)).message
    routed = NewMessage(
        text="routed",
        recipients=("+886900000001",),
        segments=1,
        encoding="GSM-7",
        route='{"server": "hq"}',
    )
    with_route = (await ledger.accept(routed, NOW)).message
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert await ledger.message_bodies([plain.id, with_route.id, unknown]) == {
        plain.id: ("plain", None),
        with_route.id: ("routed", '{"server": "hq"}'),
    }
    assert await ledger.message_bodies([]) == {}


async def test_concurrent_accepts_are_group_committed(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.accept(new((f"+8869123{i:05d}",)), NOW) for i in range(200))
    )
    assert len({r.message.id for r in results}) == 200
    assert ledger.commits < 200  # fewer fsyncs than callers
    assert (await ledger.counts())[State.QUEUED] == 200
    for result in results[::37]:
        assert await ledger.get_message(result.message.id) == result.message


async def test_idempotency_key_returns_the_original(ledger: Ledger) -> None:
    first = await ledger.accept(new(("+886912345678", "+886912345679"), key="order-7"), NOW)
    again = await ledger.accept(new(("+886900000000",), key="order-7", text="other"), NOW + 5)
    assert first.created and not again.created
    assert again.message == first.message
    assert (await ledger.counts())[State.QUEUED] == 2


async def test_idempotency_key_returns_the_original_even_within_one_batch(
    ledger: Ledger,
) -> None:
    results = await asyncio.gather(*(ledger.accept(new(key="order-1"), NOW) for _ in range(20)))
    assert len({r.message.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert all(r.message == results[0].message for r in results)
    assert (await ledger.counts())[State.QUEUED] == 1
    # Mixed batch: a key already stored, a key new twice over, and no key at all.
    mixed = await asyncio.gather(
        ledger.accept(new(key="order-1"), NOW),
        ledger.accept(new(key="order-2"), NOW),
        ledger.accept(new(), NOW),
        ledger.accept(new(key="order-2"), NOW),
    )
    assert [r.created for r in mixed] == [False, True, True, False]
    assert mixed[0].message.id == results[0].message.id
    assert mixed[3].message == mixed[1].message
    assert (await ledger.counts())[State.QUEUED] == 3


async def test_one_bad_write_fails_only_its_caller(ledger: Ledger) -> None:
    bad = new(("+886912345670", None))  # type: ignore[arg-type]  # NOT NULL number
    results = await asyncio.wait_for(
        asyncio.gather(
            *(ledger.accept(new((f"+88691234{i:04d}",)), NOW) for i in range(5)),
            ledger.accept(bad, NOW),
            *(ledger.accept(new((f"+88691235{i:04d}",)), NOW) for i in range(5)),
            return_exceptions=True,
        ),
        timeout=10,
    )
    assert isinstance(results[5], LedgerError)
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(not isinstance(r, BaseException) and r.created for r in good)
    assert (await ledger.counts())[State.QUEUED] == 10
    # The ledger goes on accepting.
    assert (await ledger.accept(new(), NOW)).created


async def test_close_finishes_queued_writes_then_refuses(
    ledger: Ledger, make_ledger: Callable[[], Ledger]
) -> None:
    tasks = [
        asyncio.create_task(ledger.accept(new((f"+88691234{i:04d}",)), NOW)) for i in range(50)
    ]
    await asyncio.sleep(0)  # every task has queued its write
    await ledger.close()
    ids = [(await task).message.id for task in tasks]
    await ledger.close()  # twice is fine
    with pytest.raises(LedgerError):
        await ledger.accept(new(), NOW)
    with pytest.raises(LedgerError):
        await ledger.counts()
    again = make_ledger()
    await again.open()
    try:
        for message_id in ids:
            assert await again.get_message(message_id) is not None
    finally:
        await again.close()


# --- dispatch ----------------------------------------------------------------------------------


async def test_claim_is_compare_and_set(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    assert await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW) == [rid]
    assert await ledger.claim([Claim(rid, "goip", "hq", "G102")], NOW) == []
    recipient = await only_recipient(ledger, message.id)
    assert (recipient.state, recipient.line, recipient.attempts) == (State.DISPATCHING, "G101", 1)
    assert (recipient.route, recipient.server) == ("goip", "hq")


async def test_an_outcome_decided_on_a_state_changes_nothing_once_it_changed(
    ledger: Ledger,
) -> None:
    # A dispatch pass read the recipient queued and parks it; another instance claimed it
    # meanwhile: the park must not make it queued again (it would be sent twice).
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    assert await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW) == [rid]
    park = Outcome(rid, State.QUEUED, error_code="no_route", retry_at=NOW + 60)
    await ledger.record([replace(park, if_state=State.QUEUED)], NOW + 1)
    assert (await only_recipient(ledger, message.id)).state is State.DISPATCHING
    # Without it, a requeue of the claim (a send that failed) applies as before.
    await ledger.record([park], NOW + 2)
    recipient = await only_recipient(ledger, message.id)
    assert (recipient.state, recipient.error_code) == (State.QUEUED, "no_route")


async def test_concurrent_claims_of_one_recipient_win_once(ledger: Ledger) -> None:
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    a, b = (r.id for r in message.recipients)
    won = await asyncio.gather(
        *(
            ledger.claim([Claim(a, "goip", "hq", f"G{i}"), Claim(b, "goip", "hq", "G9")], NOW)
            for i in range(10)
        )
    )
    assert sorted(rid for claimed in won for rid in claimed) == [a, b]


async def reach(ledger: Ledger, state: State, number: str) -> tuple[str, int]:
    """A new recipient driven to `state` the way dispatch and reports would."""
    message = (await ledger.accept(new((number,)), NOW)).message
    rid = message.recipients[0].id
    if state is State.CANCELLED:
        await ledger.cancel(message.id, NOW)
    elif state is not State.QUEUED:
        await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
        path = {
            State.DISPATCHING: [],
            State.FAILED: [State.FAILED],
            State.EXPIRED: [State.EXPIRED],
            State.SUBMITTED: [State.SUBMITTED],
            State.SENT: [State.SUBMITTED, State.SENT],
            State.DELIVERED: [State.SUBMITTED, State.SENT, State.DELIVERED],
        }[state]
        for step in path:
            await ledger.record([Outcome(rid, step, task_id=number[-6:])], NOW + 1)
    assert await state_of(ledger, message.id) is state
    return message.id, rid


def allowed(current: State, new: State) -> State | None:
    """The rule as the interface states it, independent of the code under test."""
    if current in FINAL_STATES or new is State.CANCELLED:
        return None  # final is final; cancelling is Ledger.cancel's job
    if new is State.QUEUED:
        ok = current in (State.QUEUED, State.DISPATCHING, State.SUBMITTED)
        return new if ok else None  # retry; never after the SMS went out
    if new is State.FAILED:
        return new
    if new is State.EXPIRED:
        # Only before an upstream was asked: a recipient handed over is the upstream's.
        return new if current in (State.QUEUED, State.DISPATCHING) else None
    return new if RANK[new] > RANK[current] else None


async def test_every_transition_follows_the_monotonic_rule(ledger: Ledger) -> None:
    pairs = [(a, b) for a in State for b in State]
    start = await asyncio.gather(
        *(reach(ledger, a, f"+88690{i:07d}") for i, (a, _) in enumerate(pairs))
    )
    before = {rid: await only_recipient(ledger, mid) for mid, rid in start}
    await ledger.record(
        [
            Outcome(rid, b, error_code="x1", retry_at=NOW + 60, exclude_line="hq/G1")
            for (_, b), (_, rid) in zip(pairs, start, strict=True)
        ],
        NOW + 10,
    )
    for (a, b), (mid, rid) in zip(pairs, start, strict=True):
        after = await only_recipient(ledger, mid)
        expected = allowed(a, b)
        if expected is None:
            assert after == before[rid], f"{a} -> {b} must change nothing"
            continue
        assert after.state is expected, f"{a} -> {b}"
        assert after.updated_at == NOW + 10
        assert after.error_code == "x1"
        if expected is State.QUEUED:
            assert after.next_attempt_at == NOW + 60
            assert after.excluded_lines == ("hq/G1",)
        if expected is State.SUBMITTED:
            assert after.submitted_at == NOW + 10
        if expected is State.SENT:
            assert after.sent_at == NOW + 10
        if expected is State.DELIVERED:
            assert after.delivered_at == NOW + 10
            assert after.sent_at == (before[rid].sent_at or NOW + 10)


async def test_receipt_before_succeeded_and_duplicates(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="7", upstream_id="7.x")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW + 0.5)  # duplicate
    assert (await only_recipient(ledger, message.id)).submitted_at == NOW
    # A receipt before the "succeeded" report: delivered, and the late report changes nothing.
    await ledger.record([Outcome(rid, State.DELIVERED)], NOW + 1)
    await ledger.record([Outcome(rid, State.SENT)], NOW + 2)
    await ledger.record([Outcome(rid, State.SUBMITTED)], NOW + 3)
    await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW)], NOW + 4)
    await ledger.record([Outcome(rid, State.FAILED, error_code="331")], NOW + 5)
    r = await only_recipient(ledger, message.id)
    assert r.state is State.DELIVERED
    assert r.sent_at == NOW + 1 and r.delivered_at == NOW + 1 and r.updated_at == NOW + 1
    assert r.error_code is None
    assert (r.task_id, r.upstream_id) == ("7", "7.x")
    # Outcomes for recipients the ledger never had are ignored.
    await ledger.record([Outcome(10**9, State.SENT)], NOW)


async def test_outcomes_in_one_call_apply_in_order(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record(
        [
            Outcome(rid, State.SUBMITTED, task_id="9"),
            Outcome(rid, State.SENT),
            Outcome(rid, State.QUEUED, retry_at=NOW),
        ],
        NOW + 1,
    )
    assert await state_of(ledger, message.id) is State.SENT


async def test_retry_path_and_excluded_lines(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="7")], NOW)
    await ledger.record(
        [
            Outcome(
                rid,
                State.QUEUED,
                error_code="331",
                error_meaning="x",
                retry_at=NOW + 5,
                exclude_line="hq/G101",
            )
        ],
        NOW + 1,
    )
    assert await ledger.due(NOW + 4, 10) == []
    (due,) = await ledger.due(NOW + 5, 10)
    assert due.excluded_lines == ("hq/G101",)
    assert due.error_code == "331"
    # The next attempt goes elsewhere and fails the same way on a second line.
    assert await ledger.claim([Claim(rid, "goip", "hq", "G102")], NOW + 6) == [rid]
    r = await only_recipient(ledger, message.id)
    assert (r.attempts, r.line, r.task_id) == (2, "G102", None)
    # A late report for the first attempt's task no longer finds this recipient.
    assert await ledger.find_by_task("hq", "7", "+886912345678") is None
    again = Outcome(rid, State.QUEUED, retry_at=NOW + 7, exclude_line="hq/G102")
    await ledger.record([again], NOW + 7)
    await ledger.record([again], NOW + 7.5)  # the same line is not listed twice
    assert (await only_recipient(ledger, message.id)).excluded_lines == ("hq/G101", "hq/G102")
    # A sent recipient is never queued again.
    await ledger.claim([Claim(rid, "goip", "hq", "G103")], NOW + 8)
    await ledger.record([Outcome(rid, State.SENT)], NOW + 9)
    await ledger.record([Outcome(rid, State.QUEUED, retry_at=NOW)], NOW + 10)
    assert await state_of(ledger, message.id) is State.SENT


STEPS = st.lists(
    st.one_of(st.just("claim"), st.sampled_from([s for s in State if s is not State.CANCELLED])),
    max_size=8,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
async def test_any_sequence_of_claims_and_outcomes_follows_the_rule(
    ledger: Ledger, steps: list[str | State]
) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    model = State.QUEUED
    for step in steps:
        if step == "claim":
            claimed = await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
            assert claimed == ([rid] if model is State.QUEUED else [])
            model = State.DISPATCHING if model is State.QUEUED else model
        else:
            assert isinstance(step, State)
            await ledger.record([Outcome(rid, step, retry_at=NOW)], NOW)
            model = allowed(model, step) or model
        assert await state_of(ledger, message.id) is model


OUTCOMES = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(list(State)),
        st.sampled_from([None, "7", "8"]),
        st.sampled_from([None, "hq/G1", "hq/G2"]),
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=OUTCOMES)
async def test_outcomes_in_one_call_equal_one_call_each(
    ledger: Ledger, steps: list[tuple[int, State, str | None, str | None]]
) -> None:
    together = await ledger.accept(new(("+886900000001", "+886900000002", "+886900000003")), NOW)
    apart = await ledger.accept(new(("+886900000004", "+886900000005", "+886900000006")), NOW)
    for message in (together.message, apart.message):
        ids = [r.id for r in message.recipients[:2]]
        await ledger.claim([Claim(rid, "goip", "hq", "G1") for rid in ids], NOW)

    def outcomes(message: Message) -> list[Outcome]:
        return [
            Outcome(
                message.recipients[index].id,
                state,
                task_id=task,
                error_code=task and f"e{task}",
                retry_at=NOW + 5,
                exclude_line=exclude,
            )
            for index, state, task, exclude in steps
        ]

    await ledger.record(outcomes(together.message), NOW + 1)
    for outcome in outcomes(apart.message):
        await ledger.record([outcome], NOW + 1)
    after_together = await ledger.get_message(together.message.id)
    after_apart = await ledger.get_message(apart.message.id)
    assert after_together is not None and after_apart is not None

    def comparable(r: Recipient) -> tuple[object, ...]:
        return (
            r.state,
            r.attempts,
            r.next_attempt_at,
            r.task_id,
            r.error_code,
            r.excluded_lines,
            r.updated_at,
            r.submitted_at,
            r.sent_at,
            r.delivered_at,
        )

    assert [comparable(r) for r in after_together.recipients] == [
        comparable(r) for r in after_apart.recipients
    ]


async def test_find_by_task_with_and_without_plus(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="5689")], NOW)
    assert (await ledger.find_by_task("hq", "5689", "+886912345678")).id == rid  # type: ignore[union-attr]
    assert (await ledger.find_by_task("hq", "5689", "886912345678")).id == rid  # type: ignore[union-attr]
    assert await ledger.find_by_task("other", "5689", "886912345678") is None
    assert await ledger.find_by_task("hq", "5690", "886912345678") is None
    assert await ledger.find_by_task("hq", "5689", "886912345679") is None
    assert await ledger.max_task_id("hq") == 5689
    assert await ledger.max_task_id("other") is None


async def test_apply_to_task_finds_decides_and_records_in_one_write(ledger: Ledger) -> None:
    message = (await ledger.accept(new(), NOW)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], NOW)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id="77")], NOW)
    seen: list[State] = []

    def to(state: State) -> Callable[[Recipient], tuple[Outcome | None, str]]:
        def decide(recipient: Recipient) -> tuple[Outcome | None, str]:
            seen.append(recipient.state)
            return Outcome(recipient.id, state), f"was {recipient.state.value}"

        return decide

    found = await ledger.apply_to_task("hq", "77", "886912345678", NOW + 1, to(State.SENT))
    assert found is not None
    assert found[0].id == rid and found[1] == "was submitted"
    assert await state_of(ledger, message.id) is State.SENT
    # The next decision sees what the previous one recorded; backwards is still refused.
    again = await ledger.apply_to_task("hq", "77", "+886912345678", NOW + 2, to(State.SUBMITTED))
    assert again is not None and again[1] == "was sent"
    assert await state_of(ledger, message.id) is State.SENT
    nothing = await ledger.apply_to_task(
        "hq", "77", "+886912345678", NOW + 3, lambda r: (None, "no change")
    )
    assert nothing is not None and nothing[1] == "no change"
    assert (await only_recipient(ledger, message.id)).updated_at == NOW + 1
    assert await ledger.apply_to_task("hq", "78", "+886912345678", NOW, to(State.SENT)) is None
    assert await ledger.apply_to_task("b2", "77", "+886912345678", NOW, to(State.SENT)) is None
    assert seen == [State.SUBMITTED, State.SENT]


async def test_max_task_id_compares_numbers_not_text(ledger: Ledger) -> None:
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    a, b = (r.id for r in message.recipients)
    await ledger.claim([Claim(a, "goip", "hq", "G1"), Claim(b, "goip", "hq", "G2")], NOW)
    await ledger.record(
        [Outcome(a, State.SUBMITTED, task_id="99"), Outcome(b, State.SUBMITTED, task_id="100")],
        NOW,
    )
    assert await ledger.max_task_id("hq") == 100


async def test_find_by_upstream_id(ledger: Ledger) -> None:
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    ids = [r.id for r in message.recipients]
    await ledger.claim([Claim(rid, "smsgo", None, None) for rid in ids], NOW)
    await ledger.record(
        [Outcome(rid, State.SUBMITTED, upstream_id="1504280910499665") for rid in ids], NOW
    )
    found = await ledger.find_by_upstream("smsgo", "1504280910499665")
    assert [r.id for r in found] == ids
    assert await ledger.find_by_upstream("paasoo", "1504280910499665") == []


async def test_awaiting_report_is_sent_cloud_recipients_in_window(ledger: Ledger) -> None:
    numbers = ("+886900000001", "+886900000002", "+886900000003", "+886900000004")
    message = (await ledger.accept(new(numbers), NOW)).message
    a, b, c, d = (r.id for r in message.recipients)
    await ledger.claim([Claim(a, "smsgo", None, None), Claim(b, "smsgo", None, None)], NOW)
    await ledger.claim([Claim(c, "paasoo", None, None), Claim(d, "goip", "hq", "G1")], NOW)
    await ledger.record([Outcome(a, State.SENT, upstream_id="m1")], NOW + 10)
    await ledger.record([Outcome(b, State.SENT, upstream_id="m2")], NOW + 20)
    await ledger.record([Outcome(c, State.SENT, upstream_id="m3")], NOW + 10)
    await ledger.record([Outcome(d, State.SENT, upstream_id="1.x")], NOW + 10)
    window = await ledger.awaiting_report("smsgo", NOW, NOW + 30, 10)
    assert [r.id for r in window] == [a, b]
    assert [r.id for r in await ledger.awaiting_report("smsgo", NOW + 15, NOW + 30, 10)] == [b]
    assert [r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 15, 10)] == [a]
    assert [r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 30, 1)] == [a]
    # Pages: behind the (sent_at, id) of the last one seen, ties on sent_at broken by id.
    assert [
        r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 30, 10, (NOW + 10, a))
    ] == [b]
    assert [
        r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 30, 10, (NOW + 10, a - 1))
    ] == [a, b]
    assert await ledger.awaiting_report("smsgo", NOW, NOW + 30, 10, (NOW + 20, b)) == []
    # Delivered is no longer awaiting anything.
    await ledger.record([Outcome(a, State.DELIVERED)], NOW + 25)
    assert [r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 30, 10)] == [b]
    assert [r.id for r in await ledger.awaiting_report("paasoo", NOW, NOW + 30, 10)] == [c]


async def test_due_order_limit_and_scheduling(ledger: Ledger) -> None:
    later = (await ledger.accept(new(("+886900000001",), send_at=NOW + 60), NOW)).message
    first = (await ledger.accept(new(("+886900000002",)), NOW - 10)).message
    second = (await ledger.accept(new(("+886900000003", "+886900000004")), NOW - 5)).message
    assert later.recipients[0].next_attempt_at == NOW + 60
    due = await ledger.due(NOW, 10)
    assert [r.number for r in due] == ["+886900000002", "+886900000003", "+886900000004"]
    assert [r.number for r in await ledger.due(NOW, 2)] == ["+886900000002", "+886900000003"]
    assert await ledger.due(NOW - 11, 10) == []
    assert [r.message_id for r in await ledger.due(NOW + 60, 10)][-1] == later.id
    # Claimed recipients are no longer due.
    await ledger.claim([Claim(first.recipients[0].id, "goip", "hq", "G1")], NOW)
    assert [r.message_id for r in await ledger.due(NOW, 10)] == [second.id, second.id]


async def test_settle_handed_over_moves_cloud_handovers_whose_time_came(ledger: Ledger) -> None:
    numbers = ("+886900000001", "+886900000002", "+886900000003", "+886900000004")
    soon = (await ledger.accept(new(numbers, send_at=NOW + 60), NOW)).message
    later = (await ledger.accept(new(("+886900000005",), send_at=NOW + 600), NOW)).message
    handed, reported, on_sim, queued = (r.id for r in soon.recipients)
    far = later.recipients[0].id
    await ledger.claim(
        [
            Claim(handed, "smsgo", None, None),
            Claim(reported, "c123", None, None),
            Claim(far, "smsgo", None, None),
        ],
        NOW,
    )
    await ledger.record(
        [
            Outcome(handed, State.SUBMITTED, upstream_id="m1"),
            Outcome(reported, State.SUBMITTED, upstream_id="m2"),
            Outcome(far, State.SUBMITTED, upstream_id="m3"),
        ],
        NOW,
    )
    await ledger.record([Outcome(reported, State.DELIVERED)], NOW + 61)
    # A GoIP task still waiting for its report is not a hand-over: reconciliation owns it.
    await ledger.claim([Claim(on_sim, "goip", "hq", "G1")], NOW + 60)
    await ledger.record([Outcome(on_sim, State.SUBMITTED, task_id="7")], NOW + 60)
    assert await ledger.settle_handed_over(NOW + 59) == 0
    assert await ledger.settle_handed_over(NOW + 70) == 1
    assert await ledger.settle_handed_over(NOW + 70) == 0  # once
    stored = await ledger.get_message(soon.id)
    assert stored is not None
    states = {r.id: r for r in stored.recipients}
    assert states[handed].state is State.SENT and states[handed].sent_at == NOW + 60
    assert states[reported].state is State.DELIVERED
    assert states[on_sim].state is State.SUBMITTED and states[queued].state is State.QUEUED
    assert await state_of(ledger, later.id) is State.SUBMITTED
    # A report after settling still lands, and the status query window sees it meanwhile.
    assert [r.id for r in await ledger.awaiting_report("smsgo", NOW, NOW + 70, 10)] == [handed]
    await ledger.record([Outcome(handed, State.FAILED, error_code="UNDELIV")], NOW + 80)
    assert (await ledger.find_by_upstream("smsgo", "m1"))[0].state is State.FAILED


async def test_oldest_pending_leaves_out_recipients_scheduled_for_later(ledger: Ledger) -> None:
    handed = (await ledger.accept(new(("+886900000001",), send_at=NOW + 600), NOW - 100)).message
    retried = (await ledger.accept(new(("+886900000002",), send_at=NOW + 600), NOW - 90)).message
    waiting = (await ledger.accept(new(("+886900000003",)), NOW - 50)).message
    h, r, w = (m.recipients[0].id for m in (handed, retried, waiting))
    await ledger.claim([Claim(h, "smsgo", None, None), Claim(r, "smsgo", None, None)], NOW - 10)
    await ledger.record([Outcome(h, State.SUBMITTED, upstream_id="m1")], NOW - 10)
    # A hand-over the provider refused waits queued (attempts 1) until its send_at.
    await ledger.record([Outcome(r, State.QUEUED, retry_at=NOW + 600)], NOW - 10)
    # A plain retry in the future is backlog all the same.
    await ledger.claim([Claim(w, "goip", "hq", "G1")], NOW - 5)
    await ledger.record([Outcome(w, State.QUEUED, retry_at=NOW + 30)], NOW - 5)
    assert await ledger.oldest_pending(NOW) == NOW - 50
    await ledger.record([Outcome(w, State.SENT)], NOW)
    assert await ledger.oldest_pending(NOW) is None
    # Once their time has come they are backlog again (until settled or sent).
    assert await ledger.oldest_pending(NOW + 600) == NOW - 100


async def test_in_state_is_by_last_update(ledger: Ledger) -> None:
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    a, b = (r.id for r in message.recipients)
    await ledger.claim([Claim(a, "goip", "hq", "G1")], NOW + 1)
    await ledger.claim([Claim(b, "goip", "hq", "G2")], NOW + 2)
    assert [r.id for r in await ledger.in_state(State.DISPATCHING, NOW + 3, 10)] == [a, b]
    assert [r.id for r in await ledger.in_state(State.DISPATCHING, NOW + 2, 10)] == [a]
    assert [r.id for r in await ledger.in_state(State.DISPATCHING, NOW + 3, 1)] == [a]
    assert await ledger.in_state(State.SUBMITTED, NOW + 3, 10) == []


async def test_scheduled_due_and_cancel(ledger: Ledger) -> None:
    later = (await ledger.accept(new(send_at=NOW + 60), NOW)).message
    now_msg = (await ledger.accept(new(("+886912345670",)), NOW)).message
    assert [r.message_id for r in await ledger.due(NOW, 10)] == [now_msg.id]
    cancelled = await ledger.cancel(later.id, NOW)
    assert cancelled is not None and cancelled.recipients[0].state is State.CANCELLED
    assert [r.message_id for r in await ledger.due(NOW + 120, 10)] == [now_msg.id]
    assert await ledger.cancel("01NOSUCHMESSAGE0000000000", NOW) is None


async def test_cancel_handed_over_recipients_the_provider_cancelled(ledger: Ledger) -> None:
    numbers = ("+886900000001", "+886900000002", "+886900000003", "+886900000004")
    message = (await ledger.accept(new(numbers, send_at=NOW + 600), NOW)).message
    held, refused, sent, other = (r.id for r in message.recipients)
    await ledger.claim([Claim(r, "smsgo", None, None) for r in (held, refused, sent)], NOW)
    await ledger.record(
        [
            Outcome(held, State.SUBMITTED, upstream_id="m1"),
            Outcome(refused, State.SUBMITTED, upstream_id="m2"),
            Outcome(sent, State.SENT, upstream_id="m3"),
        ],
        NOW,
    )
    other_message = (await ledger.accept(new(("+886900000009",)), NOW)).message
    foreign = other_message.recipients[0].id
    # Only submitted recipients of this message named by the provider's confirmation.
    after = await ledger.cancel(message.id, NOW + 1, [held, sent, foreign])
    assert after is not None
    states = {r.id: r.state for r in after.recipients}
    assert states == {
        held: State.CANCELLED,
        refused: State.SUBMITTED,
        sent: State.SENT,
        other: State.CANCELLED,
    }
    foreign_after = await ledger.get_message(other_message.id)
    assert foreign_after is not None and foreign_after.recipients[0].state is State.QUEUED


async def test_cancel_touches_only_queued_recipients(ledger: Ledger) -> None:
    numbers = ("+886900000001", "+886900000002", "+886900000003")
    message = (await ledger.accept(new(numbers), NOW)).message
    queued, claimed, sent = (r.id for r in message.recipients)
    await ledger.claim([Claim(claimed, "goip", "hq", "G1"), Claim(sent, "goip", "hq", "G2")], NOW)
    await ledger.record([Outcome(sent, State.SENT, task_id="1")], NOW)
    cancelled = await ledger.cancel(message.id, NOW + 1)
    assert cancelled is not None
    assert [r.state for r in cancelled.recipients] == [
        State.CANCELLED,
        State.DISPATCHING,
        State.SENT,
    ]
    assert cancelled == await ledger.get_message(message.id)
    assert cancelled.recipients[0].updated_at == NOW + 1
    # Cancelled stays cancelled, whatever comes later.
    await ledger.record([Outcome(queued, State.SENT)], NOW + 2)
    assert (await ledger.cancel(message.id, NOW + 3)) == cancelled
    assert await ledger.claim([Claim(queued, "goip", "hq", "G1")], NOW) == []


async def test_duplicate_guard_and_queue_figures(ledger: Ledger) -> None:
    first = (await ledger.accept(new(text="code 1234"), NOW)).message
    assert await ledger.recent_duplicate("+886912345678", "code 1234", NOW - 600) == first.id
    assert await ledger.recent_duplicate("+886912345678", "code 1234", NOW) == first.id
    assert await ledger.recent_duplicate("+886912345678", "code 9999", NOW - 600) is None
    assert await ledger.recent_duplicate("+886912345670", "code 1234", NOW - 600) is None
    assert await ledger.recent_duplicate("+886912345678", "code 1234", NOW + 1) is None
    assert await ledger.oldest_pending(NOW) == NOW
    counts = await ledger.counts()
    assert set(counts) == set(State)
    assert counts[State.QUEUED] == 1
    assert sum(counts.values()) == 1
    await ledger.accept(new(("+886912345670",), send_at=NOW + 3600), NOW - 100)
    assert await ledger.oldest_pending(NOW) == NOW  # scheduled for later: not backlog
    assert await ledger.oldest_pending(NOW + 3600) == NOW - 100


async def test_duplicate_guard_ignores_cancelled_and_failed(ledger: Ledger) -> None:
    cancelled = (await ledger.accept(new(text="otp 1", send_at=NOW + 60), NOW)).message
    await ledger.cancel(cancelled.id, NOW)
    failed = (await ledger.accept(new(text="otp 1"), NOW)).message
    await ledger.record([Outcome(failed.recipients[0].id, State.FAILED, error_code="1")], NOW)
    assert await ledger.recent_duplicate("+886912345678", "otp 1", NOW - 60) is None
    sent = (await ledger.accept(new(text="otp 1"), NOW)).message
    rid = sent.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
    await ledger.record([Outcome(rid, State.SENT, task_id="3")], NOW)
    assert await ledger.recent_duplicate("+886912345678", "otp 1", NOW - 60) == sent.id


def guarded(
    numbers: tuple[str, ...], text: str, since: float, key: str | None = None
) -> NewMessage:
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=1,
        encoding="GSM-7",
        idempotency_key=key,
        duplicate_since=since,
    )


async def test_flood_guard_in_the_accept_transaction(ledger: Ledger) -> None:
    first = await ledger.accept(guarded(("+886900000001",), "otp 5", NOW - 600), NOW)
    assert first.created and first.duplicate_number is None
    # The second number repeats: refused, naming it and the earlier message.
    again = await ledger.accept(
        guarded(("+886900000002", "+886900000001"), "otp 5", NOW + 1 - 600), NOW + 1
    )
    assert not again.created
    assert again.duplicate_number == "+886900000001"
    assert again.message == first.message
    # Outside the window, another text, or no guard: accepted.
    later = await ledger.accept(guarded(("+886900000001",), "otp 5", NOW + 0.5), NOW + 2)
    assert later.created
    assert (await ledger.accept(guarded(("+886900000001",), "otp 6", NOW), NOW + 3)).created
    assert (await ledger.accept(new(("+886900000001",), text="otp 5"), NOW + 4)).created
    # The idempotency key comes first: a retry is a replay, not a duplicate.
    keyed = await ledger.accept(guarded(("+886900000003",), "otp 7", NOW, key="k1"), NOW + 5)
    retry = await ledger.accept(guarded(("+886900000003",), "otp 7", NOW, key="k1"), NOW + 6)
    assert not retry.created and retry.duplicate_number is None
    assert retry.message.id == keyed.message.id
    # Failed recipients do not count.
    rid = keyed.message.recipients[0].id
    await ledger.record([Outcome(rid, State.FAILED, error_code="1")], NOW + 7)
    assert (await ledger.accept(guarded(("+886900000003",), "otp 7", NOW), NOW + 8)).created


async def test_flood_guard_lets_one_of_identical_concurrent_accepts_through(
    ledger: Ledger,
) -> None:
    results = await asyncio.gather(
        *(ledger.accept(guarded(("+886900000009",), "same", NOW - 600), NOW) for _ in range(8)),
        *(
            ledger.accept(guarded((f"+8869000001{i:02d}",), "same", NOW - 600), NOW)
            for i in range(8)
        ),
    )
    identical, distinct = results[:8], results[8:]
    created = [r for r in identical if r.created]
    assert len(created) == 1
    for refused in identical:
        if not refused.created:
            assert refused.duplicate_number == "+886900000009"
            assert refused.message.id == created[0].message.id
    assert all(r.created for r in distinct)
    assert (await ledger.counts())[State.QUEUED] == 9


async def test_oldest_pending_and_counts_follow_the_states(ledger: Ledger) -> None:
    assert await ledger.oldest_pending(NOW) is None
    assert set((await ledger.counts()).values()) == {0}
    old = (await ledger.accept(new(("+886900000001",)), NOW - 50)).message
    await ledger.accept(new(("+886900000002",)), NOW - 20)
    rid = old.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
    assert await ledger.oldest_pending(NOW) == NOW - 50  # dispatching is still pending
    await ledger.record([Outcome(rid, State.SENT, task_id="1")], NOW)
    assert await ledger.oldest_pending(NOW) == NOW - 20  # sent counts as done
    counts = await ledger.counts()
    assert (counts[State.SENT], counts[State.QUEUED], counts[State.DISPATCHING]) == (1, 1, 0)


# --- inbound -----------------------------------------------------------------------------------


async def test_inbound_and_outbox(ledger: Ledger) -> None:
    inbound_id = await ledger.add_inbound(
        "hq",
        "G101",
        "10086",
        None,
        "餘額",
        "2019-09-26 15:26:05",
        NOW,
        forward_to=("http://127.0.0.1:1/a", "http://127.0.0.1:1/b"),
    )
    (record,) = await ledger.list_inbound(10, None)
    assert (record.id, record.content, record.line, record.to_number) == (
        inbound_id,
        "餘額",
        "G101",
        None,
    )
    assert (record.received_at, record.upstream_time) == (NOW, "2019-09-26 15:26:05")
    assert await ledger.outbox_due(NOW - 1, 10) == []
    items = await ledger.outbox_due(NOW, 10)
    assert {item.url for item in items} == {"http://127.0.0.1:1/a", "http://127.0.0.1:1/b"}
    assert all(item.inbound == record and item.attempts == 0 for item in items)
    await ledger.outbox_result(items[0].id, done=True, retry_at=None, error=None, now=NOW)
    await ledger.outbox_result(items[1].id, done=False, retry_at=NOW + 10, error="timeout", now=NOW)
    assert await ledger.outbox_due(NOW + 5, 10) == []
    (retry,) = await ledger.outbox_due(NOW + 10, 10)
    assert retry.attempts == 1
    await ledger.outbox_result(retry.id, done=False, retry_at=None, error="gave up", now=NOW)
    assert await ledger.outbox_due(NOW + 1000, 10) == []


def sms(
    inbox_id: int | None = None,
    line: str | None = "G101",
    text: str = "hi",
    at: str = "2026-12-07 10:00:00",
) -> GoipInbound:
    return GoipInbound("hq", line, "10086", text, at, inbox_id)


async def test_goip_inbound_push_then_inbox_is_stored_once(ledger: Ledger) -> None:
    urls = ("http://127.0.0.1:1/a",)
    first, new = await ledger.add_goip_inbound(sms(line=None), NOW, urls)
    assert new
    # The inbox lists it later with its id and the line's old name: the same SMS.
    assert await ledger.add_goip_inbound(sms(inbox_id=7, line="G9"), NOW + 1, urls) == (
        first,
        False,
    )
    assert await ledger.add_goip_inbound(sms(inbox_id=7), NOW + 2, urls) == (first, False)
    (record,) = await ledger.list_inbound(10, None)
    assert (record.id, record.line, record.received_at) == (first, "G9", NOW)
    assert len(await ledger.outbox_due(NOW + 10, 10)) == 1


async def test_goip_inbound_inbox_then_push_is_stored_once(ledger: Ledger) -> None:
    first, new = await ledger.add_goip_inbound(sms(inbox_id=7), NOW)
    assert new
    assert await ledger.add_goip_inbound(sms(), NOW + 1) == (first, False)
    # A second push of the same text in the same second is another SMS: nothing left to match.
    second, new = await ledger.add_goip_inbound(sms(), NOW + 2)
    assert new and second != first


async def test_goip_inbound_identical_sms_keep_their_count(ledger: Ledger) -> None:
    pushed = [(await ledger.add_goip_inbound(sms(), NOW))[0] for _ in range(2)]
    # Three rows in the inbox: two match the pushes (one each), the third is new.
    read = [await ledger.add_goip_inbound(sms(inbox_id=i), NOW + 1) for i in (1, 2, 3)]
    assert [r[0] for r in read[:2]] == pushed and not read[0][1] and not read[1][1]
    assert read[2][1]
    # Read again: every row is held by its inbox id.
    again = [await ledger.add_goip_inbound(sms(inbox_id=i), NOW + 2) for i in (1, 2, 3)]
    assert again == [(pushed[0], False), (pushed[1], False), (read[2][0], False)]
    # Other text, other second, other server: other SMS.
    assert (await ledger.add_goip_inbound(sms(inbox_id=4, text="hi!"), NOW))[1]
    assert (await ledger.add_goip_inbound(sms(at="2026-12-07 10:00:01"), NOW))[1]
    other = GoipInbound("branch", "G1", "10086", "hi", "2026-12-07 10:00:00", 1)
    assert (await ledger.add_goip_inbound(other, NOW))[1]
    assert len(await ledger.list_inbound(100, None)) == 6


async def test_goip_inbound_racing_push_and_inbox_store_once(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.add_goip_inbound(sms(inbox_id=i, text=str(i)), NOW) for i in range(20)),
        *(ledger.add_goip_inbound(sms(text=str(i)), NOW) for i in range(20)),
    )
    assert sum(new for _, new in results) == 20
    assert len(await ledger.list_inbound(100, None)) == 20


async def test_inbox_watermark(ledger: Ledger, make_ledger: Callable[[], Ledger]) -> None:
    assert await ledger.inbox_watermark("hq") is None
    await ledger.set_inbox_watermark("hq", "2026-12-07 10:00:00", NOW)
    await ledger.set_inbox_watermark("hq", "2026-12-07 10:05:00", NOW + 300)
    await ledger.close()
    reopened = make_ledger()
    await reopened.open()
    try:
        assert await reopened.inbox_watermark("hq") == "2026-12-07 10:05:00"
        assert await reopened.inbox_watermark("branch") is None
    finally:
        await reopened.close()


async def submitted(ledger: Ledger, task: str, at: float, number: str = "+886912345678") -> int:
    message = (await ledger.accept(new((number,), text=task), at)).message
    rid = message.recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G101")], at)
    await ledger.record([Outcome(rid, State.SUBMITTED, task_id=task)], at)
    return rid


async def test_progress_since_sees_reports_on_recent_sends_only(ledger: Ledger) -> None:
    sent = await submitted(ledger, "1", NOW)
    waiting = await submitted(ledger, "2", NOW + 10)
    assert not await ledger.progress_since("hq", NOW, NOW - 600)
    await ledger.record([Outcome(sent, State.SENT)], NOW + 20)
    assert await ledger.progress_since("hq", NOW + 20, NOW - 600)
    assert not await ledger.progress_since("hq", NOW + 21, NOW - 600)  # reported before
    assert not await ledger.progress_since("hq", NOW + 20, NOW + 5)  # handed over before
    assert not await ledger.progress_since("branch", NOW, NOW - 600)
    # goipd's own verdicts are not the server's engine at work; the server's error codes are.
    await ledger.record([Outcome(waiting, State.FAILED, error_code="report_timeout")], NOW + 30)
    assert not await ledger.progress_since("hq", NOW + 21, NOW - 600)
    failed = await submitted(ledger, "3", NOW + 40)
    await ledger.record([Outcome(failed, State.FAILED, error_code="500")], NOW + 50)
    assert await ledger.progress_since("hq", NOW + 45, NOW - 600)


async def test_a_late_send_of_an_abandoned_task_is_found_once(ledger: Ledger) -> None:
    rid = await submitted(ledger, "41", NOW)
    other = await submitted(ledger, "43", NOW, "+886912345679")
    (recipient, moved) = await ledger.submitted_of(["hq"], NOW + 1, 10)
    await ledger.abandon_tasks("hq", [recipient], "failed", NOW)
    await ledger.abandon_tasks("hq", [moved], "moved", NOW)
    await ledger.abandon_tasks("hq", [moved], "moved", NOW + 1)  # again: still one row
    assert await ledger.late_send("hq", "42", "886912345678") is None
    assert await ledger.late_send("branch", "41", "886912345678") is None
    assert await ledger.late_send("hq", "41", "886912345678") == (rid, "failed")
    # The receipt's report of the same send: counted already.
    assert await ledger.late_send("hq", "41", "+886912345678") is None
    assert await ledger.late_send("hq", "43", "+886912345679") == (other, "moved")
    # Kept two days, then forgotten with the next abandonment.
    third = await submitted(ledger, "44", NOW, "+886912345670")
    (last,) = [r for r in await ledger.submitted_of(["hq"], NOW + 1, 10) if r.id == third]
    await ledger.abandon_tasks("hq", [last], "failed", NOW)
    await ledger.abandon_tasks("hq", [], "failed", NOW + 2 * 86400 + 1)
    assert await ledger.late_send("hq", "44", "886912345670") is None


async def test_nul_in_stored_text_becomes_u_fffd_and_the_batch_commits(ledger: Ledger) -> None:
    # PostgreSQL text cannot hold U+0000: unreplaced, the inbound SMS would be lost and, in
    # one group commit with it, everyone else's writes too.
    results = await asyncio.wait_for(
        asyncio.gather(
            *(ledger.accept(new((f"+88691234{i:04d}",)), NOW) for i in range(3)),
            ledger.add_inbound("hq", "G1\x00", "100\x0086", None, "a\x00b", "t\x00", NOW),
            ledger.accept(new(("+886912349999",), text="x\x00y", key="k\x00"), NOW),
            *(ledger.accept(new((f"+88691235{i:04d}",)), NOW) for i in range(3)),
            return_exceptions=True,
        ),
        timeout=10,
    )
    assert not any(isinstance(r, BaseException) for r in results), results
    (record,) = await ledger.list_inbound(10, None)
    assert (record.line, record.from_number, record.content, record.upstream_time) == (
        "G1\ufffd",
        "100\ufffd86",
        "a\ufffdb",
        "t\ufffd",
    )
    accepted = results[4]
    assert not isinstance(accepted, BaseException) and not isinstance(accepted, int)
    stored = await ledger.get_message(accepted.message.id)
    assert stored is not None and stored == accepted.message
    assert (stored.text, stored.idempotency_key) == ("x\ufffdy", "k\ufffd")
    assert await ledger.recent_duplicate("+886912349999", "x\x00y", NOW - 1) == stored.id
    (r,) = stored.recipients
    await ledger.claim([Claim(r.id, "goip", "hq", "G1")], NOW)
    await ledger.record(
        [Outcome(r.id, State.FAILED, error_code="5\x00", error_meaning="bad\x00 reply")], NOW
    )
    failed = await only_recipient(ledger, stored.id)
    assert (failed.error_code, failed.error_meaning) == ("5\ufffd", "bad\ufffd reply")
    assert (await ledger.counts())[State.QUEUED] == 6


async def test_reports_written_together_each_see_the_ones_before(ledger: Ledger) -> None:
    # Queued together they are one write (PostgreSQL: one lookup, one UPDATE per column set):
    # each must still be decided on what the earlier ones did, at its own time.
    message = (await ledger.accept(new(("+886912345678", "+886912345679")), NOW)).message
    first, second = message.recipients
    await ledger.claim([Claim(r.id, "goip", "hq", "G101") for r in (first, second)], NOW)
    await ledger.record(
        [
            Outcome(first.id, State.SUBMITTED, task_id="80"),
            Outcome(second.id, State.SUBMITTED, task_id="81"),
        ],
        NOW,
    )

    def to(state: State) -> Callable[[Recipient], tuple[Outcome | None, State]]:
        def decide(recipient: Recipient) -> tuple[Outcome | None, State]:
            return Outcome(recipient.id, state), recipient.state

        return decide

    results = await asyncio.gather(
        ledger.apply_to_task("hq", "80", "+886912345678", NOW + 1, to(State.SENT)),
        ledger.apply_to_task("hq", "80", "886912345678", NOW + 2, to(State.DELIVERED)),
        ledger.apply_to_task("hq", "99", "+886912345678", NOW + 3, to(State.SENT)),
        ledger.apply_to_task("hq", "81", "+886912345679", NOW + 4, to(State.FAILED)),
        ledger.apply_to_task("hq", "81", "+886912345679", NOW + 5, to(State.SENT)),
    )
    assert [found[1] if found else None for found in results] == [
        State.SUBMITTED,
        State.SENT,
        None,
        State.SUBMITTED,
        State.FAILED,
    ]
    stored = await ledger.get_message(message.id)
    assert stored is not None
    delivered, failed = stored.recipients
    assert (delivered.state, delivered.sent_at, delivered.delivered_at) == (
        State.DELIVERED,
        NOW + 1,
        NOW + 2,
    )
    assert (failed.state, failed.updated_at, failed.sent_at) == (State.FAILED, NOW + 4, None)


async def submitted_as_tasks(
    ledger: Ledger, count: int
) -> tuple[Message, tuple[str, ...], list[int]]:
    """A message to `count` numbers, its recipients submitted to "hq" as tasks 90 and on."""
    numbers = tuple(f"+88691234567{i}" for i in range(count))
    message = (await ledger.accept(new(numbers), NOW)).message
    ids = [r.id for r in message.recipients]
    await ledger.claim([Claim(rid, "goip", "hq", "G101") for rid in ids], NOW)
    await ledger.record(
        [Outcome(rid, State.SUBMITTED, task_id=str(90 + i)) for i, rid in enumerate(ids)], NOW
    )
    return message, numbers, ids


async def test_a_report_may_decide_for_another_recipient(ledger: Ledger) -> None:
    # decide may name a recipient other than the one reported: one of the same batch (a later
    # report of it sees the change) or one no report of the batch names.
    message, numbers, ids = await submitted_as_tasks(ledger, 3)

    def send(target: int) -> Callable[[Recipient], tuple[Outcome | None, State]]:
        return lambda recipient: (Outcome(target, State.SENT), recipient.state)

    results = await asyncio.gather(
        ledger.apply_to_task("hq", "90", numbers[0], NOW + 1, send(ids[1])),
        ledger.apply_to_task("hq", "91", numbers[1], NOW + 2, send(ids[2])),
        ledger.apply_to_task("hq", "90", numbers[0], NOW + 3, send(ids[0])),
    )
    assert [found[1] if found else None for found in results] == [
        State.SUBMITTED,
        State.SENT,  # the first report's decision, seen
        State.SUBMITTED,
    ]
    stored = await ledger.get_message(message.id)
    assert stored is not None
    assert [(r.state, r.sent_at) for r in stored.recipients] == [
        (State.SENT, NOW + 3),
        (State.SENT, NOW + 1),
        (State.SENT, NOW + 2),
    ]


async def test_a_report_whose_decision_raises_fails_alone(ledger: Ledger) -> None:
    # A bug in one report's decision is that caller's error: the reports queued with it are
    # still applied (each of them is a push the SMS Server never sends again).
    message, numbers, ids = await submitted_as_tasks(ledger, 3)

    def sent(recipient: Recipient) -> tuple[Outcome | None, None]:
        return Outcome(recipient.id, State.SENT), None

    def broken(recipient: Recipient) -> tuple[Outcome | None, None]:
        raise ZeroDivisionError("a bug in one decision")

    commits = ledger.commits
    results = await asyncio.gather(
        ledger.apply_to_task("hq", "90", numbers[0], NOW + 1, sent),
        ledger.apply_to_task("hq", "91", numbers[1], NOW + 1, broken),
        ledger.apply_to_task("hq", "92", numbers[2], NOW + 1, sent),
        return_exceptions=True,
    )
    assert isinstance(results[1], ZeroDivisionError)
    assert [type(results[0]), type(results[2])] == [tuple, tuple]
    assert ledger.commits - commits == 1  # the three were one batch
    stored = await ledger.get_message(message.id)
    assert stored is not None
    assert [r.state for r in stored.recipients] == [State.SENT, State.SUBMITTED, State.SENT]


async def test_reports_of_one_batch_with_different_columns_each_set_their_own(
    ledger: Ledger,
) -> None:
    # One round, four sets of columns (PostgreSQL: one UPDATE writing the rest back as is).
    message, numbers, ids = await submitted_as_tasks(ledger, 5)
    outcomes = [
        Outcome(ids[0], State.SENT),
        Outcome(ids[1], State.DELIVERED),
        Outcome(ids[2], State.QUEUED, error_code="500", retry_at=NOW + 60, exclude_line="hq/G1"),
        Outcome(ids[3], State.FAILED, error_code="38", error_meaning="Network out of order"),
    ]

    def decide(outcome: Outcome) -> Callable[[Recipient], tuple[Outcome | None, None]]:
        return lambda recipient: (outcome, None)

    await asyncio.gather(
        *(
            ledger.apply_to_task("hq", str(90 + i), numbers[i], NOW + 1 + i, decide(outcome))
            for i, outcome in enumerate(outcomes)
        )
    )
    stored = await ledger.get_message(message.id)
    assert stored is not None
    sent, delivered, queued, failed, untouched = stored.recipients
    assert (sent.state, sent.sent_at, sent.delivered_at, sent.updated_at) == (
        State.SENT,
        NOW + 1,
        None,
        NOW + 1,
    )
    assert (delivered.state, delivered.sent_at, delivered.delivered_at) == (
        State.DELIVERED,
        NOW + 2,
        NOW + 2,
    )
    assert (queued.state, queued.next_attempt_at, queued.excluded_lines) == (
        State.QUEUED,
        NOW + 60,
        ("hq/G1",),
    )
    assert (queued.error_code, queued.error_meaning, queued.task_id) == ("500", None, "92")
    assert (failed.state, failed.error_code, failed.error_meaning, failed.sent_at) == (
        State.FAILED,
        "38",
        "Network out of order",
        None,
    )
    for recipient in (sent, delivered, failed):
        assert (recipient.excluded_lines, recipient.error_code is None) == (
            (),
            recipient is not failed,
        )
    assert (untouched.state, untouched.updated_at, untouched.task_id, untouched.sent_at) == (
        State.SUBMITTED,
        NOW,
        "94",
        None,
    )


async def test_inbound_without_forwarding_and_paging(ledger: Ledger) -> None:
    ids = [
        await ledger.add_inbound("hq", None, f"1008{i}", "+886900000000", f"m{i}", "", NOW + i)
        for i in range(5)
    ]
    assert await ledger.outbox_due(NOW + 100, 10) == []
    page = await ledger.list_inbound(2, None)
    assert [r.id for r in page] == ids[::-1][:2]
    page2 = await ledger.list_inbound(10, page[-1].id)
    assert [r.id for r in page2] == ids[::-1][2:]
    assert await ledger.list_inbound(10, ids[0]) == []


async def test_concurrent_inbound_is_durable_with_its_outbox(
    ledger: Ledger, make_ledger: Callable[[], Ledger]
) -> None:
    ids = await asyncio.gather(
        *(
            ledger.add_inbound("hq", "G1", "10086", None, f"m{i}", "", NOW, ("http://x/",))
            for i in range(30)
        )
    )
    assert len(set(ids)) == 30
    await ledger.close()
    again = make_ledger()
    await again.open()
    try:
        items = await again.outbox_due(NOW, 100)
        assert sorted(item.inbound.id for item in items) == sorted(ids)
    finally:
        await again.close()


async def test_list_messages_paging_and_filters(ledger: Ledger) -> None:
    ids = [(await ledger.accept(new((f"+88691234567{i}",)), NOW + i)).message.id for i in range(5)]
    page = await ledger.list_messages(None, None, 2, None)
    assert [m.id for m in page] == ids[::-1][:2]
    page2 = await ledger.list_messages(None, None, 2, page[-1].id)
    assert [m.id for m in page2] == ids[::-1][2:4]
    page3 = await ledger.list_messages(None, None, 2, page2[-1].id)
    assert [m.id for m in page3] == ids[:1]
    assert [m.id for m in await ledger.list_messages(None, NOW + 3, 10, None)] == ids[::-1][:2]
    assert [m.id for m in await ledger.list_messages(None, NOW + 3.0005, 10, None)] == ids[4:]
    rid = page[0].recipients[0].id
    await ledger.claim([Claim(rid, "goip", "hq", "G1")], NOW)
    # dispatching is shown as submitted
    assert [m.id for m in await ledger.list_messages(State.SUBMITTED, None, 10, None)] == [
        page[0].id
    ]
    assert len(await ledger.list_messages(State.QUEUED, None, 10, None)) == 4
    assert await ledger.list_messages(State.DELIVERED, None, 10, None) == []


async def test_list_messages_since_a_fraction_of_a_millisecond(ledger: Ledger) -> None:
    at = NOW + 0.0004
    message = (await ledger.accept(new(), at)).message
    assert [m.id for m in await ledger.list_messages(None, at, 10, None)] == [message.id]
    assert await ledger.list_messages(None, at + 0.0001, 10, None) == []


async def test_a_crashing_write_does_not_stop_the_committer(ledger: Ledger) -> None:
    def boom(_conn: object) -> None:
        raise RuntimeError("bug in a write")

    committer = ledger._committer
    # SQLite isolates each item and hands the caller its own error; either way the caller
    # fails and, the point of this test, later writes still go through.
    with pytest.raises((LedgerError, RuntimeError)):
        await committer.submit(boom if isinstance(ledger, SqliteLedger) else _async_boom)
    assert (await asyncio.wait_for(ledger.accept(new(), NOW), 10)).created


async def _async_boom(_conn: object) -> None:
    raise RuntimeError("bug in a write")


BACKENDS = ["sqlite", "postgresql"]


# --- line quarantines ----------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def open_ledger(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Ledger]]]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    opened: list[Ledger] = []

    async def open_one() -> Ledger:
        store: Ledger = (
            SqliteLedger(tmp_path / "goipd.db")
            if request.param == "sqlite"
            else PostgresLedger(PG_URL, schema=schema)
        )
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    if request.param == "postgresql":
        await PostgresLedger(PG_URL, schema=schema).drop_schema()


async def test_ledger_stores_rewords_and_releases(
    open_ledger: Callable[[], Awaitable[Ledger]],
) -> None:
    ledger = await open_ledger()
    assert await ledger.line_quarantines() == []
    first = await ledger.quarantine_line("hq", "G101", "SIM swap", NOW)
    assert first == LineQuarantine("hq", "G101", "SIM swap", NOW)
    # A repeat changes the reason, not when it started.
    again = await ledger.quarantine_line("hq", "G101", None, NOW + 60)
    assert again == LineQuarantine("hq", "G101", None, NOW)
    await ledger.quarantine_line("branch", "G201", "antenna", NOW + 1)
    assert await ledger.line_quarantines() == [
        LineQuarantine("branch", "G201", "antenna", NOW + 1),
        LineQuarantine("hq", "G101", None, NOW),
    ]
    await ledger.close()
    reopened = await open_ledger()
    assert len(await reopened.line_quarantines()) == 2
    assert await reopened.release_line("hq", "G101") is True
    assert await reopened.release_line("hq", "G101") is False
    assert await reopened.release_line("nowhere", "G1") is False
    assert await reopened.line_quarantines() == [
        LineQuarantine("branch", "G201", "antenna", NOW + 1)
    ]
