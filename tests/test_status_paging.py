"""Overdue cloud sends are asked about page by page: sends whose report stays pending at the
provider for hours must not keep every later send from being asked about. A real SQLite ledger,
the smsgo client and the smsgo simulator over loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from goipd.clouds.providers import CloudContext, CloudFleet
from goipd.config import CloudProviderConfig, ReconcileSettings, SmsgoSettings
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, NewMessage, Outcome, State
from goipd.sim.smsgo import RunningSmsgoSim, start_smsgo_sim

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
