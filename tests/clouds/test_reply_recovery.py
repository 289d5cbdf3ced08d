"""c123 hands each reply out once (`/rx/`): replies of a fetch whose answer was lost are fetched
again by the hour, and identical replies are kept as often as they came. Against the c123
simulator over loopback; the hours fetched again as a pure plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from goipd.clouds.providers import CloudContext, CloudFleet
from goipd.clouds.reply_recovery import MAX_HOURS, TRIES_PER_HOUR, ReplyRecovery
from goipd.config import C123Settings, CloudProviderConfig, ReconcileSettings
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.upstream.cloud import PullsInbound

C123_PASSWORD = "c123-password"


@pytest.fixture
async def c123() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(rx_min_interval=0.0)
    yield sim
    await sim.close()


@pytest.fixture
async def c123_fleet(c123: RunningC123Sim, ledger: SqliteLedger) -> AsyncIterator[CloudFleet]:
    fleet = CloudFleet(CloudContext(ledger, Metrics(), lambda: ()), lambda: ReconcileSettings())
    settings = C123Settings(
        uid="9999", password=SecretStr(C123_PASSWORD), url=c123.url, timeout="1s"
    )
    fleet.configure([CloudProviderConfig("c123", settings, SecretStr(C123_PASSWORD), None)], None)
    yield fleet
    await fleet.stop()


async def _poll(fleet: CloudFleet) -> None:
    provider = fleet.get("c123")
    assert isinstance(provider, PullsInbound)
    await fleet._pull_inbound("c123", provider)


async def _stored(ledger: SqliteLedger) -> list[tuple[str, str]]:
    return sorted((i.from_number, i.content) for i in await ledger.list_inbound(100, None))


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
    planned = list(c123_fleet._recovery["c123"].hours)
    assert planned and all(hour.minute == 0 for hour in planned)

    c123.sim.set_fault("none")
    c123.sim.add_reply("13800138004", "arrived meanwhile")
    for _ in planned:  # one hour per poll
        await _poll(c123_fleet)
    assert not c123_fleet._recovery["c123"].hours
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
    recovered = c123_fleet.ctx.metrics.registry.get_sample_value(
        "goipd_cloud_replies_recovered_total", {"provider": "c123"}
    )
    assert recovered == 4


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
    while c123_fleet._recovery["c123"].hours:
        await _poll(c123_fleet)
    assert await _stored(ledger) == [
        ("+8613800138000", "1"),
        ("+8613800138000", "1"),
        ("+8613800138000", "1"),
        ("+8613900139000", "an answer long enough to be cut inside"),
    ]


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
