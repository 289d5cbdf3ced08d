"""c123 hands each reply out once (`/rx/`): replies fetched while the ledger refuses writes (a
real SQLite writer switched to query-only) are kept and stored first on the next poll, and no
new fetch happens while they cannot be stored. Against the c123 simulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from goipd.clouds import CloudContext, CloudFleet
from goipd.config import C123Settings, CloudProviderConfig, ReconcileSettings
from goipd.fleet.registry import LineRegistry
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics import Metrics
from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.upstream.cloud import PullsInbound
from tests.conftest import set_read_only

PASSWORD = "c123-password"


@pytest.fixture
async def c123() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(rx_min_interval=0.0)
    yield sim
    await sim.close()


async def test_replies_fetched_while_the_ledger_refuses_are_stored_next_poll(
    c123: RunningC123Sim, ledger: SqliteLedger
) -> None:
    metrics = Metrics(LineRegistry())
    fleet = CloudFleet(CloudContext(ledger, metrics, lambda: ()), lambda: ReconcileSettings())
    settings = C123Settings(uid="9999", password=SecretStr(PASSWORD), url=c123.url, timeout="1s")
    fleet.configure([CloudProviderConfig("c123", settings, SecretStr(PASSWORD), None)], None)
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
