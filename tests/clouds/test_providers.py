"""Cloud providers' periodic work, with a real SQLite ledger and the simulators over loopback:
overdue sends are asked about page by page (sends whose report stays pending at the provider
for hours must not keep every later send from being asked about), and c123 replies: none is
fetched while the ledger refuses writes (a real SQLite writer switched to query-only), and those
a fetch got as it began to refuse are fetched again by the hour once it takes them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from goipd.clouds.providers import CloudContext, CloudFleet
from goipd.clouds.reply_recovery import load
from goipd.config import C123Settings, CloudProviderConfig, ReconcileSettings, SmsgoSettings
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, LedgerError, NewMessage, Outcome, State
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.sim.smsgo import RunningSmsgoSim, start_smsgo_sim
from goipd.upstream.cloud import PullsInbound
from tests.helpers.checks import eventually
from tests.helpers.ledgers import set_read_only

PASSWORD = "smsgo-secret"
NUMBERS = tuple(f"+88691230000{i}" for i in range(5))


@pytest.fixture
async def smsgo() -> AsyncIterator[RunningSmsgoSim]:
    # Reports far in the future: every send stays pending at smsgo during the test.
    running = await start_smsgo_sim(password=PASSWORD, dlr_delay=3600.0)
    yield running
    await running.close()


def asked(smsgo: RunningSmsgoSim) -> list[str]:
    """The msgids of every status query so far, in order."""
    ids: list[str] = []
    for request in smsgo.sim.requests:
        if request["operation"] in ("query.asp", "queryBulk.asp"):
            ids.extend(request["params"]["msgid"].split(","))
    return ids


async def test_status_queries_page_through_every_overdue_send(
    smsgo: RunningSmsgoSim, ledger: SqliteLedger
) -> None:
    metrics = Metrics()
    settings = ReconcileSettings(query_after="1s", report_deadline="1h")
    fleet = CloudFleet(CloudContext(ledger, metrics, lambda: ()), lambda: settings, status_batch=2)
    config = SmsgoSettings(
        username="goipd", url=smsgo.url, backup_url=smsgo.backup_url, timeout="2s"
    )
    fleet.configure([CloudProviderConfig("smsgo", config, SecretStr(PASSWORD), None)], None)
    provider = fleet.get("smsgo")
    assert provider is not None
    try:
        now = time.time()
        message = NewMessage(text="hi", recipients=NUMBERS, segments=1, encoding="GSM-7")
        recipients = (await ledger.accept(message, now - 60)).message.recipients
        await ledger.claim([Claim(r.id, "smsgo", None, None) for r in recipients], now - 60)
        results = await provider.send(NUMBERS, "hi")
        msgids = [result.upstream_id for result in results]
        assert all(msgids)
        # Sent a minute ago, one second apart: the oldest first.
        for index, (r, msgid) in enumerate(zip(recipients, msgids, strict=True)):
            await ledger.record([Outcome(r.id, State.SENT, upstream_id=msgid)], now - 60 + index)

        for _ in range(4):
            await fleet._query_overdue("smsgo", provider)
        # Two pages of two, the last page of one, then from the oldest again.
        assert asked(smsgo) == [*msgids, msgids[0], msgids[1]]
        # Still pending at smsgo: nothing was settled by asking.
        stored = await ledger.get_message(recipients[0].message_id)
        assert stored is not None
        assert {r.state for r in stored.recipients} == {State.SENT}
    finally:
        await fleet.stop()


C123_PASSWORD = "c123-password"


@pytest.fixture
async def c123() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(rx_min_interval=0.0)
    yield sim
    await sim.close()


async def test_no_reply_is_fetched_while_the_ledger_cannot_take_the_fetchs_announcement(
    c123: RunningC123Sim, ledger: SqliteLedger
) -> None:
    fleet, provider = _c123_fleet(c123, ledger)
    try:
        c123.sim.add_reply("13800138000", "收到")
        await set_read_only(ledger, True)
        # The job fails (logged as cloud_job_failed) before any fetch: c123 keeps the reply for
        # a poll that can keep it.
        with pytest.raises(LedgerError):
            await fleet._pull_inbound("c123", provider)
        assert c123.sim.handed_out == [] and c123.sim.counters["rx_requests"] == 0
        await set_read_only(ledger, False)
        await fleet._pull_inbound("c123", provider)
        assert [i.content for i in await ledger.list_inbound(10, None)] == ["收到"]
        plan = await load(ledger, "c123", datetime.now(UTC))
        assert plan.fetching is None and plan.last_whole_fetch is not None
    finally:
        await fleet.stop()


async def test_replies_the_ledger_refused_are_fetched_again_by_the_hour_once_it_takes_them(
    c123: RunningC123Sim, ledger: SqliteLedger
) -> None:
    fleet, provider = _c123_fleet(c123, ledger)

    def pending() -> float | None:
        return fleet.ctx.metrics.registry.get_sample_value(
            "goipd_cloud_replies_pending", {"provider": "c123"}
        )

    try:
        c123.sim.add_reply("13800138000", "收到")
        c123.sim.add_reply("13900139000", "明天见")
        c123.sim.set_fault("slow", delay=0.5)
        poll = asyncio.create_task(fleet._pull_inbound("c123", provider))

        async def announced() -> bool:
            return (await load(ledger, "c123", datetime.now(UTC))).fetching is not None

        await eventually(announced, 5, "the fetch announced")
        # The ledger refuses writes while the fetch is on its way: its replies cannot be stored.
        await set_read_only(ledger, True)
        await poll
        assert len(c123.sim.handed_out) == 2  # gone from c123 now
        assert pending() == 2
        # Still refused: nothing more is fetched.
        c123.sim.set_fault("none")
        c123.sim.add_reply("13700137000", "later")
        with pytest.raises(LedgerError):
            await fleet._pull_inbound("c123", provider)
        assert len(c123.sim.handed_out) == 2 and c123.sim.counters["rx_requests"] == 1
        await set_read_only(ledger, False)
        # The unfinished fetch's hours, one per poll, then the plain fetch of what waits.
        while (await load(ledger, "c123", datetime.now(UTC))).hours or c123.sim.pending:
            await fleet._pull_inbound("c123", provider)
        stored = sorted((i.from_number, i.content) for i in await ledger.list_inbound(10, None))
        assert stored == [
            ("+8613700137000", "later"),
            ("+8613800138000", "收到"),
            ("+8613900139000", "明天见"),
        ]
        assert pending() == 0
    finally:
        await fleet.stop()


def _c123_fleet(c123: RunningC123Sim, ledger: SqliteLedger) -> tuple[CloudFleet, PullsInbound]:
    fleet = CloudFleet(CloudContext(ledger, Metrics(), lambda: ()), lambda: ReconcileSettings())
    settings = C123Settings(
        uid="9999", password=SecretStr(C123_PASSWORD), url=c123.url, timeout="2s"
    )
    fleet.configure([CloudProviderConfig("c123", settings, SecretStr(C123_PASSWORD), None)], None)
    provider = fleet.get("c123")
    assert isinstance(provider, PullsInbound)
    return fleet, provider
