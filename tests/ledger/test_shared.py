"""The `SharedRouting` role on both backends: quarantines after line errors and disabled cloud
providers are stored, read back by another instance on the same ledger (and by a new process),
and bounded: run-out quarantines are deleted by the next write, a provider has one row."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from goipd.config import ProvidersSettings
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.shared import PROVIDERS_MAX, AutoQuarantine, ProviderDisable
from goipd.ledger.sqlite import SqliteLedger
from tests.helpers.ledgers import BACKENDS, NOW, open_backend

Store = SqliteLedger | PostgresLedger


@pytest.fixture(params=BACKENDS)
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two instances on one ledger: the same SQLite file, or the same PostgreSQL schema."""
    kind = str(request.param)
    schema = f"test_{uuid.uuid4().hex[:12]}" if kind == "postgresql" else None
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(open_backend(kind, tmp_path, schema))
        two = await stack.enter_async_context(open_backend(kind, tmp_path, schema))
        yield one, two
    if isinstance(one, PostgresLedger):
        await one.drop_schema()


def quarantine(line: str, since: float, until: float, code: str | None = "331") -> AutoQuarantine:
    return AutoQuarantine("hq", line, f"3 line errors in a row (CMS {code})", code, since, until)


async def test_a_quarantine_is_read_by_the_other_instance_until_it_runs_out(
    pair: tuple[Store, Store],
) -> None:
    one, two = pair
    g1 = quarantine("G1", NOW, NOW + 600)
    await one.put_auto_quarantine(g1, NOW)
    await one.put_auto_quarantine(quarantine("G2 ü", NOW, NOW + 60, code=None), NOW)
    assert await two.auto_quarantines(NOW) == [
        g1,
        AutoQuarantine("hq", "G2 ü", "3 line errors in a row (CMS None)", None, NOW, NOW + 60),
    ]
    # Run out: no longer read, and the next write of any line deletes it.
    assert await two.auto_quarantines(NOW + 60) == [g1]
    assert await two.auto_quarantines(NOW + 600) == []
    await two.put_auto_quarantine(quarantine("G3", NOW + 61, NOW + 661), NOW + 61)
    assert await _rows(one) == [("G1", NOW + 600), ("G3", NOW + 661)]


async def test_of_two_quarantines_of_a_line_the_later_end_holds(pair: tuple[Store, Store]) -> None:
    one, two = pair
    later = quarantine("G1", NOW + 5, NOW + 605, code="332")
    await asyncio.gather(
        one.put_auto_quarantine(quarantine("G1", NOW, NOW + 600), NOW),
        two.put_auto_quarantine(later, NOW + 5),
    )
    assert await one.auto_quarantines(NOW) == [later]
    await one.put_auto_quarantine(quarantine("G1", NOW + 1, NOW + 601), NOW + 1)
    assert await two.auto_quarantines(NOW) == [later]
    # A run-out quarantine is replaced by a new one of the same line.
    renewed = quarantine("G1", NOW + 700, NOW + 1300)
    await two.put_auto_quarantine(renewed, NOW + 700)
    assert await one.auto_quarantines(NOW + 700) == [renewed]


async def test_a_release_ends_the_quarantine_for_every_instance(pair: tuple[Store, Store]) -> None:
    one, two = pair
    await one.put_auto_quarantine(quarantine("G1", NOW, NOW + 600), NOW)
    await one.put_auto_quarantine(quarantine("G2", NOW, NOW + 10), NOW)
    assert await two.release_auto_quarantine("hq", "G1", NOW + 1) is True
    assert await two.release_auto_quarantine("hq", "G1", NOW + 1) is False
    assert await one.auto_quarantines(NOW + 1) == [quarantine("G2", NOW, NOW + 10)]
    # A quarantine that ran out is deleted all the same, but there was none to end.
    assert await two.release_auto_quarantine("hq", "G2", NOW + 10) is False
    assert await _rows(one) == []
    assert await one.release_auto_quarantine("nowhere", "G1", NOW) is False


async def test_a_disable_keeps_its_start_and_is_shared_until_enabled(
    pair: tuple[Store, Store],
) -> None:
    one, two = pair
    first = ProviderDisable("paasoo", "401", NOW, NOW + 600)
    assert await one.disable_provider(first) == first
    assert await two.provider_disables() == [first]
    # A refused probe, or another instance refused too: new code and probe time, same start.
    again = await two.disable_provider(ProviderDisable("paasoo", "404", NOW + 600, NOW + 1200))
    assert again == ProviderDisable("paasoo", "404", NOW, NOW + 1200)
    await two.disable_provider(ProviderDisable("smsgo", "-2", NOW + 1, NOW + 601))
    assert [d.provider for d in await one.provider_disables()] == ["paasoo", "smsgo"]
    assert await one.enable_providers(["paasoo", "c123"]) == ["paasoo"]
    assert await two.provider_disables() == [ProviderDisable("smsgo", "-2", NOW + 1, NOW + 601)]
    assert await two.enable_providers([]) == []
    # A reload enables them all.
    await one.disable_provider(ProviderDisable("c123", "102", NOW + 2, NOW + 602))
    assert await two.enable_providers(None) == ["c123", "smsgo"]
    assert await one.provider_disables() == []
    # One row per provider goipd has a client for: the table's bound.
    assert len(ProvidersSettings.model_fields) == PROVIDERS_MAX


async def test_both_survive_the_process(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as first:
        await first.put_auto_quarantine(quarantine("G1", NOW, NOW + 600), NOW)
        await first.disable_provider(ProviderDisable("smsgo", "-2", NOW, NOW + 600))
    async with open_backend("sqlite", tmp_path) as second:
        assert await second.auto_quarantines(NOW + 1) == [quarantine("G1", NOW, NOW + 600)]
        assert await second.provider_disables() == [ProviderDisable("smsgo", "-2", NOW, NOW + 600)]


async def _rows(store: Store) -> list[tuple[str, float]]:
    """Every stored quarantine's line and end, run-out ones included."""
    return [(q.line, q.until) for q in await store.auto_quarantines(0.0)]
