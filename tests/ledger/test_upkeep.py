"""Line balances and remediations in the ledger (the `LineUpkeep` role), on both backends: a
balance reads back with its answer, a failed read keeps the last good balance beside its
error; a remediation starts once per incident, never again within the cooldown, never for more
than max_per_server lines of a server at once, also when two instances on one PostgreSQL start
them together; a result is recorded once; pending ones are listed whatever their age."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.helpers.ledgers import BACKENDS, NOW, open_backend

pytestmark = pytest.mark.parametrize("backend", BACKENDS)
HOUR = 3600.0


async def test_a_balance_and_a_failed_read_beside_it(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as ledger:
        assert await ledger.line_balances() == []
        await ledger.record_balance_error("hq", "G101", "ussd_no_response", "no answer", NOW)
        [first] = await ledger.line_balances()
        assert (first.balance, first.error_reason, first.error_at) == (
            None,
            "ussd_no_response",
            NOW,
        )
        await ledger.record_balance("hq", "G101", 123.45, "Balance NT$123.45", NOW + 1)
        await ledger.record_balance("hq", "G102", 0.5, "Balance NT$0.50", NOW + 1)
        await ledger.record_balance_error("hq", "G102", "balance_unreadable", "no match", NOW + 2)
        g101, g102 = await ledger.line_balances()
        assert (g101.balance, g101.answer, g101.read_at, g101.error) == (
            123.45,
            "Balance NT$123.45",
            NOW + 1,
            None,
        )
        # The last good balance stays, the error beside it.
        assert (g102.balance, g102.read_at, g102.error_reason, g102.error) == (
            0.5,
            NOW + 1,
            "balance_unreadable",
            "no match",
        )


async def test_a_remediation_starts_once_per_incident_and_cooldown(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as ledger:

        async def start(line: str, since: float, now: float) -> bool:
            started = await ledger.start_remediation(
                "hq",
                line,
                "unregistered",
                since,
                "reboot_module",
                now,
                cooldown=6 * HOUR,
                max_per_server=2,
            )
            return started is not None

        assert await start("G101", NOW - 600, NOW)
        assert not await start("G101", NOW - 600, NOW + 1)  # the same incident
        # Recovered, then stuck again soon after: a new incident, but within the cooldown.
        assert await ledger.finish_remediation("hq", "G101", NOW - 600, "recovered", None, NOW + 60)
        assert not await ledger.finish_remediation("hq", "G101", NOW - 600, "failed", "x", NOW + 61)
        assert not await start("G101", NOW + 100, NOW + 700)
        assert await start("G101", NOW + 100, NOW + 6 * HOUR + 1)
        assert await ledger.finish_remediation(
            "hq", "G101", NOW + 100, "failed", "no answer", NOW + 7 * HOUR
        )
        # At most two lines of a server under way; finishing one makes room.
        assert await start("G102", NOW, NOW + 10)
        assert await start("G103", NOW, NOW + 10)
        assert not await start("G104", NOW, NOW + 10)
        assert await ledger.finish_remediation(
            "hq", "G102", NOW, "failed", "still LOGOUT", NOW + 20
        )
        assert await start("G104", NOW, NOW + 30)
        done = [(r.line, r.result) for r in await ledger.remediations(NOW - HOUR)]
        assert sorted(done) == [
            ("G101", "failed"),
            ("G101", "recovered"),
            ("G102", "failed"),
            ("G103", "pending"),
            ("G104", "pending"),
        ]
        # Pending ones are listed however old; finished ones only since `since`.
        later = await ledger.remediations(NOW + 5 * HOUR)
        assert sorted((r.line, r.result) for r in later) == [
            ("G101", "failed"),
            ("G103", "pending"),
            ("G104", "pending"),
        ]
        g102 = next(r for r in await ledger.remediations(0) if r.line == "G102")
        assert (g102.detail, g102.finished_at, g102.owner) == ("still LOGOUT", NOW + 20, "local")


async def test_two_instances_never_remediate_one_incident_twice(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        pytest.skip("two instances share a ledger on PostgreSQL only")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with (
        open_backend(backend, tmp_path, schema) as first,
        open_backend(backend, tmp_path, schema) as second,
    ):
        try:
            for round_ in range(5):
                since = NOW + round_ * 10 * HOUR
                started = await asyncio.gather(
                    *(
                        ledger.start_remediation(
                            "hq",
                            line,
                            "unregistered",
                            since,
                            "reboot_module",
                            since + 600,
                            cooldown=6 * HOUR,
                            max_per_server=2,
                        )
                        for ledger in (first, second, first, second)
                        for line in ("G101", "G102", "G103")
                    )
                )
                lines = [r.line for r in started if r is not None]
                # Each line once at most, and two of the server's lines at most.
                assert len(lines) == len(set(lines)) == 2, lines
                for line in lines:
                    await first.finish_remediation(
                        "hq", line, since, "recovered", None, since + 700
                    )
        finally:
            await first.drop_schema()  # type: ignore[union-attr]
