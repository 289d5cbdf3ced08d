"""Alertmanager → SMS pages once per notification and window across restarts and instances, with
goipd as its own process: a notification is paged, goipd is SIGKILLed and restarted, and the
same notification again within the window stores and sends nothing; on one PostgreSQL ledger
two instances receiving the same notification (one after the other, across a SIGKILL of the
one that paged, and at the same moment) page once. Checked in the ledger (the messages goipd
holds) and at the simulated SMS Server (the SMS it sent)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.alerts import alert, payload
from tests.helpers.checks import eventually
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.processes import Goipd, free_port, process_config, start_process

NUMBERS = ("+886912345678", "+886912345679")
ALERTING = {
    "receivers": {"oncall": {"to": list(NUMBERS)}},
    "dedup_window": "5m",
    # Not what is tested here: each instance keeps its own budget.
    "rate_limit": {"max_messages": 100, "per": "1h"},
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as http:
        yield http


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"test_pages_{uuid.uuid4().hex[:10]}"
    yield schema
    await PostgresLedger(PG_URL, schema=schema).drop_schema()


def goipd(sim: RunningSimulator, storage: dict[str, str], path: Path, name: str) -> Goipd:
    port = free_port()
    config = process_config(sim, port, storage, alerting=ALERTING, ha={"instance_id": name})
    return start_process(config, port, path, name)


async def page(
    session: aiohttp.ClientSession, daemon: Goipd, body: dict[str, Any]
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{daemon.port}/api/v1/alertmanager"
    async with session.post(url, json=body) as resp:
        reply: dict[str, Any] = await resp.json()
        assert resp.status == 200, reply
        return reply


async def stored_messages(session: aiohttp.ClientSession, daemon: Goipd) -> list[str]:
    url = f"http://127.0.0.1:{daemon.port}/api/v1/messages?limit=1000"
    async with session.get(url) as resp:
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["messages"]]


async def sent_sms(session: aiohttp.ClientSession, sim: RunningSimulator) -> Counter[str]:
    """SMS the simulated SMS Server sent, by number."""
    return Counter(s["number"] for s in await control(session, sim, "GET", "servers/hq/sent"))


async def all_sent(session: aiohttp.ClientSession, sim: RunningSimulator, each: int) -> None:
    async def reached() -> bool:
        sent = await sent_sms(session, sim)
        return all(sent[n.lstrip("+")] + sent[n] >= each for n in NUMBERS)

    await eventually(reached, 15, f"{each} alert SMS to each number")
    sent = await sent_sms(session, sim)
    assert all(sent[n.lstrip("+")] + sent[n] == each for n in NUMBERS), sent


async def test_a_restarted_goipd_does_not_page_again(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    daemon = goipd(sim, {"url": f"sqlite:///{tmp_path / 'goipd.db'}"}, tmp_path, "goipd")
    try:
        daemon.start()
        await daemon.ready(session)
        first = await page(session, daemon, payload())
        assert first["outcome"] == "sent"
        await all_sent(session, sim, 1)

        daemon.kill()
        daemon.start()
        await daemon.ready(session)
        again = await page(session, daemon, payload())
        assert again["outcome"] == "deduplicated", again
        assert again["duplicate_of"] == first["message_id"]
        assert await stored_messages(session, daemon) == [first["message_id"]]
        # The page held back that notification only: its resolution is news.
        resolved = payload(
            alert("resolved", "SIM of line hq/G101 not registered"), status="resolved"
        )
        assert (await page(session, daemon, resolved))["outcome"] == "sent"
        await all_sent(session, sim, 2)
    finally:
        daemon.ensure_dead()


async def test_two_instances_on_one_postgresql_page_once(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    session: aiohttp.ClientSession,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    storage = {"url": PG_URL, "pg_schema": pg_schema}
    alpha = goipd(sim, storage, tmp_path, "alpha")
    beta = goipd(sim, storage, tmp_path, "beta")
    try:
        for daemon in (alpha, beta):
            daemon.start()
        for daemon in (alpha, beta):
            await daemon.ready(session)

        first = await page(session, alpha, payload())
        assert first["outcome"] == "sent"
        reply = await page(session, beta, payload())
        assert (reply["outcome"], reply["duplicate_of"]) == ("deduplicated", first["message_id"])
        # The instance that paged dies; neither the other nor its restart pages again.
        alpha.kill()
        reply = await page(session, beta, payload())
        assert (reply["outcome"], reply["duplicate_of"]) == ("deduplicated", first["message_id"])
        alpha.start()
        await alpha.ready(session)
        reply = await page(session, alpha, payload())
        assert (reply["outcome"], reply["duplicate_of"]) == ("deduplicated", first["message_id"])

        # Both instances get each notification at the same moment (two Alertmanagers, or a
        # retry through the load balancer): one pages.
        groups = [f'{{}}:{{alertname="GoipdSimDead", line="G{i}"}}' for i in range(5)]
        for group in groups:
            replies = await asyncio.gather(
                *(page(session, d, payload(group_key=group)) for d in (alpha, beta))
            )
            outcomes = sorted(r["outcome"] for r in replies)
            assert outcomes == ["deduplicated", "sent"], (group, replies)

        stored = await stored_messages(session, beta)
        assert len(stored) == 1 + len(groups) and first["message_id"] in stored
        await all_sent(session, sim, 1 + len(groups))
    finally:
        for daemon in (alpha, beta):
            daemon.ensure_dead()
