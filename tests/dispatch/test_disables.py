"""Disabled cloud providers are stored in the ledger as the router disables and enables them, and
adopted from it: two routers on one SQLite file stand for two instances on one ledger. Only the
router allowed to probe (the `cloud:<provider>` lease holder) makes the probe sends."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from goipd.config import RoutingSettings
from goipd.dispatch.disables import ProviderDisables
from goipd.dispatch.routing import CloudChoice, Router
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import SharedRouting
from goipd.ledger.shared import ProviderDisable
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from tests.helpers.checks import sample
from tests.helpers.ledgers import NOW, open_backend, set_read_only

CLOUDS = ("paasoo", "smsgo")
TW = "+886912345678"


class Instance:
    def __init__(self, ledger: SharedRouting, *, probes: bool = True) -> None:
        settings = RoutingSettings(provider_probe_interval="10m")
        self.router = Router(
            LineRegistry({}), settings, (), {}, CLOUDS, probes=lambda _name: probes
        )
        self.metrics = Metrics()
        self.woken = 0
        self.disables = ProviderDisables(ledger, self.router, self.metrics, self._wake)

    def _wake(self) -> None:
        self.woken += 1

    def choose(self, now: float) -> str | None:
        choice = self.router.choose(self.router.targets_for(TW), now)
        return choice.provider if isinstance(choice, CloudChoice) else None

    def gauge(self, provider: str) -> float | None:
        return sample(self.metrics.render().decode(), "goipd_provider_disabled", provider=provider)


async def test_a_disable_and_its_end_reach_the_other_instance(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one, two = Instance(ledger), Instance(ledger)
        assert one.router.disable_cloud("paasoo", NOW, "401") is True
        await one.disables.stop()  # the write started at once
        assert await ledger.provider_disables() == [
            ProviderDisable("paasoo", "401", NOW, NOW + 600)
        ]
        assert two.choose(NOW) == "paasoo"
        with structlog.testing.capture_logs() as logs:
            await two.disables.sync()
        assert [(e["event"], e["code"]) for e in logs] == [("provider_disable_adopted", "401")]
        assert two.choose(NOW + 1) == "smsgo" and two.router.disabled_by("paasoo") == "401"
        assert two.gauge("paasoo") == 1 and two.gauge("smsgo") == 0
        # Another refusal on two: disabled already, the stored start stays.
        assert two.router.disable_cloud("paasoo", NOW + 5, "404") is False
        await two.disables.stop()
        assert await ledger.provider_disables() == [
            ProviderDisable("paasoo", "404", NOW, NOW + 605)
        ]

        # One's probe is answered: enabled, and two follows at its next sync.
        assert one.router.enable_cloud("paasoo") is True
        await one.disables.stop()
        assert await ledger.provider_disables() == []
        await two.disables.sync()
        assert two.choose(NOW + 10) == "paasoo" and two.gauge("paasoo") == 0
        assert two.woken == 1


async def test_a_restarted_instance_keeps_the_disable(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        first = Instance(ledger)
        first.router.disable_cloud("paasoo", NOW, "401")
        await first.disables.stop()
    async with open_backend("sqlite", tmp_path) as ledger:
        second = Instance(ledger)
        await second.disables.sync()
        assert second.router.disabled_by("paasoo") == "401"  # what a balance poll may clear
        stored = ProviderDisable("paasoo", "401", NOW, NOW + 600)
        assert second.router.cloud_disable("paasoo") == stored
        assert second.choose(NOW + 1) == "smsgo" and second.gauge("paasoo") == 1
        # The probe comes at the stored time, not one interval after the restart.
        assert second.choose(NOW + 600) == "paasoo"
        assert second.choose(NOW + 601) == "smsgo"


async def test_only_the_lease_holder_probes(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        holder, other = Instance(ledger, probes=True), Instance(ledger, probes=False)
        other.router.disable_cloud("paasoo", NOW, "401")
        await other.disables.stop()
        await holder.disables.sync()
        assert other.choose(NOW + 600) == "smsgo"
        assert holder.choose(NOW + 600) == "paasoo"  # the probe
        # Its probe time moved on here; a sync (the ledger still says NOW + 600) keeps it.
        await holder.disables.sync()
        assert holder.choose(NOW + 601) == "smsgo"
        assert holder.choose(NOW + 1200) == "paasoo"
        assert other.choose(NOW + 10**6) == "smsgo"


async def test_a_reload_enables_every_provider_everywhere(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one, two = Instance(ledger), Instance(ledger)
        one.router.disable_cloud("paasoo", NOW, "401")
        two.router.disable_cloud("smsgo", NOW, "-8")
        await one.disables.stop()
        await two.disables.stop()
        one.router.reconfigure(one.router.settings, (), {}, CLOUDS)
        await one.disables.reloaded()
        assert await ledger.provider_disables() == []
        await two.disables.sync()
        assert two.choose(NOW) == "paasoo" and two.router.cloud_disable("smsgo") is None


async def test_a_change_the_ledger_refused_is_stored_at_the_next_sync(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        assert isinstance(ledger, SqliteLedger)
        one, two = Instance(ledger), Instance(ledger)
        await set_read_only(ledger, True)
        with structlog.testing.capture_logs() as logs:
            one.router.disable_cloud("paasoo", NOW, "401")
            await one.disables.stop()
        assert [e["event"] for e in logs][-1] == "provider_disable_unstored"
        with pytest.raises(LedgerError):
            await one.disables.sync()
        # Still disabled here: nothing was adopted from a ledger that does not have it yet.
        assert one.choose(NOW + 1) == "smsgo"
        await set_read_only(ledger, False)
        await one.disables.sync()
        assert one.choose(NOW + 2) == "smsgo"
        await two.disables.sync()
        assert two.choose(NOW + 3) == "smsgo"
