"""Quarantines after line errors are stored in the ledger and adopted from it: another instance
on the same ledger (two registries on one SQLite file stand for two instances) and a new process
get them at their next sync, a release ends them everywhere, and a quarantine the ledger refused
stays in effect and is stored at the next sync. Manual quarantines: tests/system."""

from __future__ import annotations

from pathlib import Path

import structlog

from goipd.fleet.quarantine import AutoQuarantines, ManualQuarantines
from goipd.fleet.registry import LineRegistry
from goipd.ledger.base import SharedRouting
from goipd.ledger.shared import AutoQuarantine
from goipd.ledger.sqlite import SqliteLedger
from goipd.upstream.goip import LineStatus
from tests.helpers.ledgers import NOW, open_backend, set_read_only


def fleet() -> LineRegistry:
    registry = LineRegistry(["hq"])
    registry.apply_poll(
        "hq", [LineStatus(line, True, True, "LOGIN", None, None) for line in ("G1", "G2")], NOW
    )
    return registry


class Instance:
    """One goipd's registry and its AutoQuarantines on a shared ledger."""

    def __init__(self, ledger: SharedRouting) -> None:
        self.registry = fleet()
        self.woken = 0
        self.auto = AutoQuarantines(ledger, self.registry, self._wake)

    def _wake(self) -> None:
        self.woken += 1

    async def line_errors(self, line: str, count: int, now: float = NOW) -> None:
        """`count` reports of line errors in a row, as reports/goip.py applies them."""
        for _ in range(count):
            if self.registry.note_send_result(
                "hq", line, line_error=True, code="331", threshold=3, cooldown=600.0, now=now
            ):
                await self.auto.store("hq", line, now)

    def quarantined(self, line: str, now: float = NOW + 1) -> bool:
        found = self.registry.line("hq", line)
        assert found is not None
        return found.auto_quarantined(now)


async def test_a_quarantine_reaches_the_other_instance_and_a_new_process(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one, two = Instance(ledger), Instance(ledger)
        await one.line_errors("G1", 2)
        await two.line_errors("G1", 2)  # errors in a row are counted per instance
        assert not one.quarantined("G1") and not two.quarantined("G1")
        await one.line_errors("G1", 1)
        assert one.quarantined("G1") and not two.quarantined("G1")
        await two.auto.sync(NOW + 1)
        assert two.quarantined("G1") and not two.quarantined("G2")
        g1 = two.registry.line("hq", "G1")
        assert g1 is not None and g1.quarantine_reason == "3 line errors in a row (CMS 331)"
        assert not two.quarantined("G1", NOW + 600)
        # Two's own errors on the quarantined line do not start another one.
        await two.line_errors("G1", 1)
        assert await ledger.auto_quarantines(NOW) == [one.registry.auto[("hq", "G1")]]

    async with open_backend("sqlite", tmp_path) as ledger:
        restarted = Instance(ledger)
        await restarted.auto.sync(NOW + 2)
        assert restarted.quarantined("G1") and not restarted.quarantined("G1", NOW + 600)
        # Run out: gone from the registry at the next sync.
        await restarted.auto.sync(NOW + 600)
        assert restarted.registry.auto == {}


async def test_a_release_ends_the_quarantine_everywhere(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one, two = Instance(ledger), Instance(ledger)
        await one.line_errors("G1", 3)
        await two.auto.sync(NOW + 1)
        assert two.quarantined("G1")
        # Released through two's API: with a manual quarantine, both end.
        manual = ManualQuarantines(ledger, two.registry, two._wake, two.auto)
        await manual.quarantine("hq", "G1", "SIM swap", NOW + 1, "test")
        released = await manual.release("hq", "G1", NOW + 2, "test")
        assert released.manual and released.auto and not two.quarantined("G1")
        assert await ledger.auto_quarantines(NOW + 2) == []
        woken = one.woken
        await one.auto.sync(NOW + 3)
        assert not one.quarantined("G1") and one.woken == woken + 1
        assert (await manual.release("hq", "G1", NOW + 4, "test")).auto is False
        # Released before one's sync got it: still released (the ledger had it).
        await one.line_errors("G2", 3)
        assert await two.auto.release("hq", "G2", NOW + 5) is True
        await one.auto.sync(NOW + 6)
        assert not one.quarantined("G2")


async def test_a_line_that_comes_back_is_still_quarantined(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one = Instance(ledger)
        await one.line_errors("G2", 3)
        status = LineStatus("G1", True, True, "LOGIN", None, None)
        one.registry.apply_poll("hq", [status], NOW + 1)  # G2 is gone...
        back = LineStatus("G2", True, True, "LOGIN", None, None)
        one.registry.apply_poll("hq", [status, back], NOW + 2)  # ...and back, a new Line
        assert one.quarantined("G2", NOW + 3)


async def test_a_quarantine_the_ledger_refused_holds_and_is_stored_later(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        assert isinstance(ledger, SqliteLedger)
        one, two = Instance(ledger), Instance(ledger)
        await set_read_only(ledger, True)
        with structlog.testing.capture_logs() as logs:
            await one.line_errors("G1", 3)
        assert [entry["event"] for entry in logs][-1] == "auto_quarantine_unstored"
        assert one.quarantined("G1")
        await set_read_only(ledger, False)
        # A sync does not drop it for not being in the ledger: it stores it first.
        await one.auto.sync(NOW + 1)
        assert one.quarantined("G1")
        await two.auto.sync(NOW + 1)
        assert two.quarantined("G1")


async def test_a_sync_that_read_before_a_change_does_not_undo_it(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as ledger:
        one = Instance(ledger)
        reading = ledger.auto_quarantines

        async def read_then_quarantine(now: float) -> list[AutoQuarantine]:
            stored = await reading(now)
            await one.line_errors("G2", 3)  # lands while the sync reads
            return stored

        ledger.auto_quarantines = read_then_quarantine  # type: ignore[method-assign]
        await one.auto.sync(NOW)
        ledger.auto_quarantines = reading  # type: ignore[method-assign]
        assert one.quarantined("G2")
        await one.auto.sync(NOW)
        assert one.quarantined("G2")
