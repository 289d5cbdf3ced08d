"""c123 hands each reply out once (`/rx/`): replies of a fetch whose answer was lost, or whose
replies were not stored, are fetched again by the hour, and identical replies are kept as often
as they came. The plan lives in the ledger: a new CloudFleet on the same ledger (a restarted
goipd, or the instance that took the provider's lease over) goes on with it. Against the c123
simulator over loopback and a real SQLite ledger; the hours fetched again as a pure plan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from goipd.clouds import reply_recovery
from goipd.clouds.providers import CloudContext, CloudFleet
from goipd.clouds.reply_recovery import (
    MAX_HOURS,
    TRIES_PER_HOUR,
    ReplyRecovery,
    Superseded,
    load,
    save,
)
from goipd.config import C123Settings, CloudProviderConfig, ReconcileSettings
from goipd.ledger.documents_sqlite import MAX_DOCUMENT_CHARS
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.upstream.cloud import PullsInbound
from tests.helpers.checks import eventually

C123_PASSWORD = "c123-password"

Fleets = Callable[[], CloudFleet]


@pytest.fixture
async def c123() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(rx_min_interval=0.0)
    yield sim
    await sim.close()


@pytest.fixture
async def fleets(c123: RunningC123Sim, ledger: SqliteLedger) -> AsyncIterator[Fleets]:
    """New CloudFleets on the one ledger: each is a goipd (re)started, or another instance."""
    made: list[CloudFleet] = []

    def make() -> CloudFleet:
        fleet = CloudFleet(CloudContext(ledger, Metrics(), lambda: ()), lambda: ReconcileSettings())
        settings = C123Settings(
            uid="9999", password=SecretStr(C123_PASSWORD), url=c123.url, timeout="1s"
        )
        config = CloudProviderConfig("c123", settings, SecretStr(C123_PASSWORD), None)
        fleet.configure([config], None)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        await fleet.stop()


@pytest.fixture
def c123_fleet(fleets: Fleets) -> CloudFleet:
    return fleets()


async def _poll(fleet: CloudFleet) -> None:
    provider = fleet.get("c123")
    assert isinstance(provider, PullsInbound)
    await fleet._pull_inbound("c123", provider)


async def _plan(ledger: SqliteLedger) -> ReplyRecovery:
    return await load(ledger, "c123", datetime.now(UTC))


async def _stored(ledger: SqliteLedger) -> list[tuple[str, str]]:
    return sorted((i.from_number, i.content) for i in await ledger.list_inbound(100, None))


def _metric(fleet: CloudFleet, name: str) -> float | None:
    return fleet.ctx.metrics.registry.get_sample_value(name, {"provider": "c123"})


@pytest.mark.parametrize("fault", ["truncated", "timeout"])
async def test_replies_of_a_fetch_whose_answer_was_lost_are_fetched_again_by_the_hour(
    c123: RunningC123Sim, c123_fleet: CloudFleet, ledger: SqliteLedger, fault: str
) -> None:
    # Three entries of one length: half the reply ends inside the second one.
    for number in ("13800138001", "13800138002", "13800138003"):
        c123.sim.add_reply(number, "reply text of some length")
    c123.sim.set_fault(fault, delay=2.0)
    await _poll(c123_fleet)
    # Truncated: c123 handed them out and goipd could not read them; timeout: unknown.
    assert await _stored(ledger) == []
    planned = list((await _plan(ledger)).hours)
    assert planned and all(hour.minute == 0 for hour in planned)

    c123.sim.set_fault("none")
    c123.sim.add_reply("13800138004", "arrived meanwhile")
    for _ in planned:  # one hour per poll
        await _poll(c123_fleet)
    assert not (await _plan(ledger)).hours
    rx_by_hour = c123.sim.counters["rx_requests"]
    assert [(n[-4:], t) for n, t in await _stored(ledger)] == [
        ("8001", "reply text of some length"),
        ("8002", "reply text of some length"),
        ("8003", "reply text of some length"),
        ("8004", "arrived meanwhile"),
    ]
    # The next plain fetch hands out what was still waiting (the fourth reply and, after the
    # timeout, all four) again: nothing is stored twice.
    await _poll(c123_fleet)
    await _poll(c123_fleet)
    assert c123.sim.counters["rx_requests"] == rx_by_hour + 2
    assert len(await _stored(ledger)) == 4
    assert c123.sim.pending == []
    assert _metric(c123_fleet, "goipd_cloud_replies_recovered_total") == 4
    assert _metric(c123_fleet, "goipd_cloud_reply_hours_abandoned_total") == 0


async def test_identical_replies_within_one_second_are_kept_as_often_as_they_came(
    c123: RunningC123Sim, c123_fleet: CloudFleet, ledger: SqliteLedger
) -> None:
    at = datetime.now(UTC)
    for _ in range(2):
        c123.sim.add_reply("13800138000", "1", at=at)
    c123.sim.add_reply("13900139000", "an answer long enough to be cut inside", at=at)
    await _poll(c123_fleet)  # stores all three
    c123.sim.add_reply("13800138000", "1", at=at)  # a third "1" in the same second
    c123.sim.set_fault("truncated")
    await _poll(c123_fleet)
    c123.sim.set_fault("none")
    while (await _plan(ledger)).hours:
        await _poll(c123_fleet)
    assert await _stored(ledger) == [
        ("+8613800138000", "1"),
        ("+8613800138000", "1"),
        ("+8613800138000", "1"),
        ("+8613900139000", "an answer long enough to be cut inside"),
    ]


JUST_NOW = "just now, with a text long enough to be cut inside"


async def test_a_restarted_fleet_goes_on_with_the_plan_and_the_tries_of_its_hour(
    c123: RunningC123Sim, fleets: Fleets, ledger: SqliteLedger
) -> None:
    # The replies of the lost fetch in the hour before this one and in this one: the plan has
    # two hours at least, and each holds one of them.
    now = datetime.now(UTC)
    c123.sim.add_reply("13800138001", "an hour ago", at=now - timedelta(minutes=65))
    # Longer than the first: the truncated answer ends inside it.
    c123.sim.add_reply("13800138002", JUST_NOW, at=now)
    c123.sim.set_fault("truncated")
    first = fleets()
    await _poll(first)
    planned = list((await _plan(ledger)).hours)
    assert len(planned) >= 2
    # The first hour fails twice, then goipd dies (nothing of it kept in memory matters).
    c123.sim.set_fault("http_500")
    await _poll(first)
    await _poll(first)
    assert (await _plan(ledger)).tries == TRIES_PER_HOUR - 1
    await first.stop()

    c123.sim.set_fault("none")
    second = fleets()
    await _poll(second)  # the first hour's last try works
    plan = await _plan(ledger)
    assert list(plan.hours) == planned[1:] and plan.tries == 0
    while (await _plan(ledger)).hours:
        # Each poll a new goipd: killed while it holds the rest of the plan.
        await _poll(fleets())
    assert await _stored(ledger) == [
        ("+8613800138001", "an hour ago"),
        ("+8613800138002", JUST_NOW),
    ]


async def test_an_hour_that_keeps_failing_is_given_up_and_counted(
    c123: RunningC123Sim, fleets: Fleets, ledger: SqliteLedger
) -> None:
    c123.sim.add_reply("13800138001", "waiting")
    c123.sim.set_fault("truncated")
    first = fleets()
    await _poll(first)
    planned = list((await _plan(ledger)).hours)
    c123.sim.set_fault("http_500")
    await _poll(first)
    # A restart in between: the tries so far are kept.
    second = fleets()
    for _ in range(TRIES_PER_HOUR - 1):
        await _poll(second)
    assert list((await _plan(ledger)).hours) == planned[1:]
    assert _metric(second, "goipd_cloud_reply_hours_abandoned_total") == 1
    assert _metric(first, "goipd_cloud_reply_hours_abandoned_total") == 0


async def test_a_fleet_that_dies_during_a_fetch_leaves_its_hours_to_the_next(
    c123: RunningC123Sim, fleets: Fleets, ledger: SqliteLedger
) -> None:
    c123.sim.add_reply("13800138001", "handed out to the dead")
    c123.sim.add_reply("13800138001", "handed out to the dead")
    c123.sim.set_fault("slow", delay=0.3)
    dying = fleets()
    poll = asyncio.create_task(_poll(dying))

    async def announced() -> bool:
        return (await _plan(ledger)).fetching is not None

    await eventually(announced, 5, "the fetch announced in the ledger")
    # The process dies with the request on its way: c123 still hands the replies out.
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    await dying.stop()

    async def handed_out() -> bool:
        return len(c123.sim.handed_out) == 2

    await eventually(handed_out, 5, "c123 handed the replies out")
    assert await _stored(ledger) == []
    c123.sim.set_fault("none")
    restarted = fleets()
    while True:
        await _poll(restarted)
        plan = await _plan(ledger)
        if not plan.hours and plan.fetching is None:
            break
    assert await _stored(ledger) == [("+8613800138001", "handed out to the dead")] * 2
    # The plain fetch after the hours finds nothing to store twice.
    await _poll(restarted)
    assert len(await _stored(ledger)) == 2


async def test_a_plan_written_by_another_instance_since_it_was_read_is_not_overwritten(
    ledger: SqliteLedger,
) -> None:
    mine = await _plan(ledger)
    theirs = await _plan(ledger)
    theirs.fetch_lost(datetime.now(UTC))
    await save(ledger, "c123", theirs, 0.0)
    mine.fetched_whole(datetime.now(UTC))
    with pytest.raises(Superseded):
        await save(ledger, "c123", mine, 0.0)
    assert (await _plan(ledger)).hours == theirs.hours


async def test_an_unreadable_plan_fetches_the_hours_around_now_again(ledger: SqliteLedger) -> None:
    assert await ledger.put_provider_document("c123", reply_recovery.DOCUMENT, "{", 0, 0.0) == 1
    now = datetime.now(UTC)
    plan = await load(ledger, "c123", now)
    assert plan.fetching == now and plan.version == 1


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_hours_fetched_again_run_from_the_last_whole_fetch_to_the_lost_one() -> None:
    recovery = ReplyRecovery()
    recovery.fetched_whole(_utc("2026-12-04 09:55"))
    assert recovery.fetch_lost(_utc("2026-12-04 10:05")) == [
        _utc("2026-12-04 09:00"),
        _utc("2026-12-04 10:00"),
    ]
    assert recovery.hour_fetched() == _utc("2026-12-04 09:00")
    # The plain fetch after them looks at what was stored from the first hour on.
    assert recovery.check_next_fetch_since == _utc("2026-12-04 08:50")
    # Each hour is tried a few times, then given up.
    assert [recovery.hour_failed() for _ in range(TRIES_PER_HOUR)][-1] == _utc("2026-12-04 10:00")
    assert not recovery.hours


def test_without_a_whole_fetch_before_it_a_lost_fetch_reaches_back_an_hour() -> None:
    assert ReplyRecovery().fetch_lost(_utc("2026-12-04 10:55")) == [
        _utc("2026-12-04 09:00"),
        _utc("2026-12-04 10:00"),
        _utc("2026-12-04 11:00"),  # 10:55 + the clock slack
    ]


def test_at_most_a_day_of_hours_is_fetched_again() -> None:
    recovery = ReplyRecovery()
    recovery.fetched_whole(_utc("2026-12-01 00:00"))
    hours = recovery.fetch_lost(_utc("2026-12-04 10:30"))
    assert len(hours) == MAX_HOURS
    assert hours[-1] == _utc("2026-12-04 10:00")


def test_the_plan_reads_back_as_written_and_its_largest_fits_a_document() -> None:
    recovery = ReplyRecovery(tries=2)
    recovery.fetched_whole(_utc("2026-11-01 00:00"))
    recovery.fetch_lost(_utc("2026-12-04 10:30"))
    recovery.hour_fetched()
    recovery.fetch_started(_utc("2026-12-04 10:40:00.123456"))
    recovery.fetch_lost(_utc("2026-12-04 11:30"))
    assert len(recovery.hours) == MAX_HOURS
    recovery.fetch_started(_utc("2026-12-04 11:40"))
    body = recovery.to_json()
    assert ReplyRecovery.from_json(body, 7) == ReplyRecovery(
        last_whole_fetch=recovery.last_whole_fetch,
        fetching=recovery.fetching,
        hours=recovery.hours,
        tries=recovery.tries,
        check_next_fetch_since=recovery.check_next_fetch_since,
        version=7,
    )
    assert len(body) < MAX_DOCUMENT_CHARS // 8
