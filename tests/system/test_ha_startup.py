"""A slow start-up (many sends of a previous process to settle with querysms) must not let this
instance's leases run out: another instance would poll its servers too, and settle the claims
this one is settling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from goipd.app import Daemon
from goipd.config import load_settings
from goipd.ledger.postgres import PostgresLedger
from goipd.model import Claim, NewMessage, Outcome, State
from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.ledgers import PG_URL

INTERRUPTED = 40


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    await PostgresLedger(PG_URL, schema=name).drop_schema()


async def _leave_sends_in_flight(schema: str) -> None:
    """A previous process's `submitted` sends on `slow`: the next start asks about each."""
    ledger = PostgresLedger(PG_URL, schema=schema, instance_id="previous")
    await ledger.open()
    try:
        then = time.time() - 60
        for index in range(INTERRUPTED):
            new = NewMessage(f"t{index}", [f"+8869{index:08d}"], 1, "gsm7")
            [recipient] = (await ledger.accept(new, then)).message.recipients
            assert await ledger.claim([Claim(recipient.id, "goip", "slow", "S1")], then)
            await ledger.record(
                [Outcome(recipient.id, State.SUBMITTED, task_id=str(1000 + index))], then
            )
    finally:
        await ledger.close()


async def test_leases_are_renewed_while_a_slow_start_up_runs(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    schema: str,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G1"}], slow=[{"line_id": "S1"}]))
    await _leave_sends_in_flight(schema)
    # Each querysms on `slow` takes 0.2 s: settling 40 sends outlasts a 1 s lease many times.
    await control(http, sim, "PUT", "servers/slow/fault", {"mode": "slow", "delay": 0.2})

    def daemon(name: str) -> Daemon:
        config = daemon_config(
            sim,
            ["hq", "slow"],
            tmp_path,
            storage={"url": PG_URL, "pg_schema": schema},
            ha={"instance_id": name, "lease_ttl": "1s"},
            reconcile={"interval": "1s", "query_after": "2s", "report_deadline": "1h"},
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return Daemon(load_settings(path))

    first, second = daemon("a"), daemon("b")
    first_start = asyncio.create_task(first.start())
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        for _ in range(100):
            try:
                if await conn.fetchval("SELECT owner FROM leases WHERE name = 'poll:hq'") == "a":
                    break
            except asyncpg.UndefinedTableError:
                pass
            await asyncio.sleep(0.05)
        await second.start()
        both_poll = heartbeat_expired = samples = 0
        while not first_start.done() and samples < 300:
            samples += 1
            if first.registry.servers["hq"].owned and second.registry.servers["hq"].owned:
                both_poll += 1
            heartbeat_expired += bool(
                await conn.fetchval(
                    "SELECT expires_at < extract(epoch FROM clock_timestamp()) FROM leases "
                    "WHERE name = 'instance:a'"
                )
            )
            await asyncio.sleep(0.1)
        await first_start
    finally:
        await conn.close()
        for running in (second, first):
            if first_start.done() and not running.stopped.is_set():
                await running.stop(grace=1.0)
    assert samples > 10, "the start-up was not slow enough to test anything"
    assert both_poll == 0, f"both instances polled hq in {both_poll} samples"
    assert heartbeat_expired == 0, f"a's heartbeat expired in {heartbeat_expired} samples"
