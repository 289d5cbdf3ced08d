"""Cloud providers' periodic work, with a real SQLite ledger and the simulators over loopback:
overdue sends are asked about page by page (sends whose report stays pending at the provider
for hours must not keep every later send from being asked about), and c123 replies fetched while
the ledger refuses writes (a real SQLite writer switched to query-only) are kept and stored
first on the next poll, with no new fetch while they cannot be stored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from goipd.clouds.providers import CloudContext, CloudFleet
from goipd.config import C123Settings, CloudProviderConfig, ReconcileSettings, SmsgoSettings
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, NewMessage, Outcome, State
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.sim.smsgo import RunningSmsgoSim, start_smsgo_sim
from goipd.upstream.cloud import PullsInbound
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


async def test_replies_fetched_while_the_ledger_refuses_are_stored_next_poll(
    c123: RunningC123Sim, ledger: SqliteLedger
) -> None:
    metrics = Metrics()
    fleet = CloudFleet(CloudContext(ledger, metrics, lambda: ()), lambda: ReconcileSettings())
    settings = C123Settings(
        uid="9999", password=SecretStr(C123_PASSWORD), url=c123.url, timeout="1s"
    )
    fleet.configure([CloudProviderConfig("c123", settings, SecretStr(C123_PASSWORD), None)], None)
    provider = fleet.get("c123")
    assert isinstance(provider, PullsInbound)

    def pending() -> float | None:
        return metrics.registry.get_sample_value(
            "goipd_cloud_replies_pending", {"provider": "c123"}
        )

    try:
        c123.sim.add_reply("13800138000", "收到")
        c123.sim.add_reply("13900139000", "明天见")
        await set_read_only(ledger, True)
        await fleet._pull_inbound("c123", provider)
        assert len(c123.sim.handed_out) == 2  # gone from c123 now
        assert pending() == 2
        # Still refused: the kept replies are not stored, and nothing more is fetched.
        c123.sim.add_reply("13700137000", "later")
        await fleet._pull_inbound("c123", provider)
        assert len(c123.sim.handed_out) == 2 and pending() == 2
        await set_read_only(ledger, False)
        await fleet._pull_inbound("c123", provider)
        stored = await ledger.list_inbound(10, None)
        # The kept ones first, then the newly fetched one.
        assert [i.content for i in reversed(stored)] == ["收到", "明天见", "later"]
        assert [i.from_number for i in reversed(stored)][:2] == ["+8613800138000", "+8613900139000"]
        assert pending() == 0 and len(c123.sim.handed_out) == 3
    finally:
        await fleet.stop()
