"""Alertmanager pages in the ledger (the `AlertPages` role), on both backends: the duplicate check
and the claim of a page are one atomic step (of many claiming at once, also from two instances
on one PostgreSQL, one gets it), a page survives reopening the ledger, a failed page is undone,
a claim whose SMS was never recorded stops counting after UNRECORDED_PAGE_KEEP, and pages are
forgotten by age and beyond MAX_PAGES."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from goipd.ledger.pages_sqlite import MAX_PAGES, UNRECORDED_PAGE_KEEP
from goipd.ledger.postgres import PostgresLedger
from goipd.ledger.sqlite import SqliteLedger
from tests.helpers.ledgers import BACKENDS, NOW, open_backend

Ledger = SqliteLedger | PostgresLedger
KEY = ("oncall", '{}:{alertname="GoipdSimDead"}', "firing")
WINDOW = 300.0

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


async def stored_pages(store: Ledger) -> list[tuple[str, float, str]]:
    """(group_key, paged_at, message_id) of every row, oldest first."""
    query = "SELECT group_key, paged_at, message_id FROM alert_pages ORDER BY paged_at"
    if isinstance(store, SqliteLedger):

        def read(conn: sqlite3.Connection) -> list[tuple[str, float, str]]:
            return [(r[0], r[1], r[2]) for r in conn.execute(query)]

        return await store._read(read)
    rows = await store._read(lambda conn: conn.fetch(query))
    return [(r[0], r[1], r[2]) for r in rows]


async def test_a_page_holds_back_the_same_notification_for_the_window(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as store:
        assert await store.claim_alert_page(*KEY, NOW, WINDOW) is None
        # Still being stored: a duplicate, of a message not known yet.
        assert await store.claim_alert_page(*KEY, NOW + 1, WINDOW) == ""
        await store.record_alert_page(*KEY, NOW, "MSG1")
        assert await store.claim_alert_page(*KEY, NOW + WINDOW - 0.5, WINDOW) == "MSG1"
        # Another status, group or receiver is another notification.
        assert await store.claim_alert_page("oncall", KEY[1], "resolved", NOW + 1, WINDOW) is None
        assert await store.claim_alert_page("oncall", "other", "firing", NOW + 1, WINDOW) is None
        assert await store.claim_alert_page("pager", KEY[1], "firing", NOW + 1, WINDOW) is None
        # The window ends: the same notification pages again, and the new claim is unrecorded.
        assert await store.claim_alert_page(*KEY, NOW + WINDOW, WINDOW) is None
        assert await store.claim_alert_page(*KEY, NOW + WINDOW + 1, WINDOW) == ""
        # The window is the caller's (a reload may change it): a shorter one ends sooner.
        await store.record_alert_page(*KEY, NOW + WINDOW, "MSG2")
        assert await store.claim_alert_page(*KEY, NOW + WINDOW + 10, 10.0) is None


async def test_a_recorded_page_survives_reopening_the_ledger(backend: str, tmp_path: Path) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with open_backend(backend, tmp_path, schema=schema) as store:
        assert await store.claim_alert_page(*KEY, NOW, WINDOW) is None
        await store.record_alert_page(*KEY, NOW, "MSG1")
    try:
        async with open_backend(backend, tmp_path, schema=schema) as reopened:
            assert await reopened.claim_alert_page(*KEY, NOW + 60, WINDOW) == "MSG1"
    finally:
        if backend == "postgresql":
            async with open_backend(backend, tmp_path, schema=schema) as last:
                assert isinstance(last, PostgresLedger)
                await last.drop_schema()


async def test_a_released_claim_is_as_if_never_made(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        assert await store.claim_alert_page(*KEY, NOW, WINDOW) is None
        # Another stamp is another claim: it releases nothing.
        await store.release_alert_page(*KEY, NOW - 1)
        assert await store.claim_alert_page(*KEY, NOW + 1, WINDOW) == ""
        await store.release_alert_page(*KEY, NOW)
        assert await store.claim_alert_page(*KEY, NOW + 1, WINDOW) is None
        # A recorded page is not undone by a late release.
        await store.record_alert_page(*KEY, NOW + 1, "MSG1")
        await store.release_alert_page(*KEY, NOW + 1)
        assert await store.claim_alert_page(*KEY, NOW + 2, WINDOW) == "MSG1"


async def test_an_unrecorded_claim_stops_counting_after_its_keep(
    backend: str, tmp_path: Path
) -> None:
    # Its process died between the claim and storing the SMS: a repeat must page, not vanish.
    async with open_backend(backend, tmp_path) as store:
        assert await store.claim_alert_page(*KEY, NOW, WINDOW) is None
        assert await store.claim_alert_page(*KEY, NOW + UNRECORDED_PAGE_KEEP - 1, WINDOW) == ""
        taken_at = NOW + UNRECORDED_PAGE_KEEP
        assert await store.claim_alert_page(*KEY, taken_at, WINDOW) is None
        # The first claimant, late, neither records nor releases the new claim.
        await store.record_alert_page(*KEY, NOW, "LATE")
        await store.release_alert_page(*KEY, NOW)
        assert await store.claim_alert_page(*KEY, taken_at + 1, WINDOW) == ""
        await store.record_alert_page(*KEY, taken_at, "MSG2")
        # Recorded, it counts for the whole window.
        assert await store.claim_alert_page(*KEY, taken_at + WINDOW - 1, WINDOW) == "MSG2"


async def test_a_page_stamped_far_ahead_does_not_count(backend: str, tmp_path: Path) -> None:
    # Another instance's clock a little ahead still counts; a clock stepped back by more
    # than the window must not silence the notification until it catches up.
    async with open_backend(backend, tmp_path) as store:
        assert await store.claim_alert_page(*KEY, NOW, WINDOW) is None
        await store.record_alert_page(*KEY, NOW, "MSG1")
        assert await store.claim_alert_page(*KEY, NOW - WINDOW + 1, WINDOW) == "MSG1"
        assert await store.claim_alert_page(*KEY, NOW - WINDOW, WINDOW) is None


async def test_of_many_claiming_at_once_one_gets_it(backend: str, tmp_path: Path) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with open_backend(backend, tmp_path, schema=schema) as one:
        if backend == "sqlite":
            instances: list[Ledger] = [one]  # one process per SQLite file
            claims = await _claim_at_once(instances)
        else:
            async with open_backend(backend, tmp_path, schema=schema) as two:
                instances = [one, two]
                claims = await _claim_at_once(instances)
        for group in range(10):
            won = [c for c in claims if c[0] == f"g{group}" and c[1] is None]
            assert len(won) == 1, (group, claims)
            assert all(c[1] == "" for c in claims if c[0] == f"g{group}" and c[1] is not None)
        assert len(await stored_pages(one)) == 10


async def _claim_at_once(instances: list[Ledger]) -> list[tuple[str, str | None]]:
    """Ten notifications, each claimed eight times at once, spread over the instances."""

    async def claim(index: int) -> tuple[str, str | None]:
        group = f"g{index % 10}"
        store = instances[index % len(instances)]
        return group, await store.claim_alert_page("oncall", group, "firing", NOW, WINDOW)

    return list(await asyncio.gather(*(claim(i) for i in range(80))))


async def test_pages_are_forgotten_by_age_and_beyond_the_cap(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as store:
        assert await store.claim_alert_page("oncall", "old", "firing", NOW, WINDOW) is None
        await store.record_alert_page("oncall", "old", "firing", NOW, "MSG1")
        assert await store.claim_alert_page("oncall", "new", "firing", NOW + WINDOW, WINDOW) is None
        assert [p[0] for p in await stored_pages(store)] == ["new"]

        # A flood of distinct notifications within the window: the newest MAX_PAGES stay.
        rows = [
            ("oncall", f"flood{i}", "firing", NOW + WINDOW + i / 100, "ID")
            for i in range(MAX_PAGES)
        ]
        await _insert(store, rows)
        last = NOW + WINDOW + MAX_PAGES / 100
        assert await store.claim_alert_page("oncall", "last", "firing", last, 10 * WINDOW) is None
        pages = await stored_pages(store)
        assert len(pages) == MAX_PAGES
        assert pages[-1][0] == "last" and pages[0][0] == "flood1"


async def _insert(store: Ledger, rows: list[tuple[str, str, str, float, str]]) -> None:
    if isinstance(store, SqliteLedger):

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO alert_pages VALUES (?, ?, ?, ?, ?)", rows)

        await store._write(write)
    else:
        await store._read(lambda conn: conn.copy_records_to_table("alert_pages", records=rows))
