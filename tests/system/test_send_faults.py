"""Upstream faults while sending: an SMS Server that breaks between two polls must not lose a
message, stop the API or /metrics, or keep goipd from failing over to a healthy server; once the
fault clears the server is used again by itself. A full disk answers 503 and recovers.

Polling faults (classification, backoff, recovery of `goipd_server_up`) are in
test_fleet_polling.py; cloud providers' faults are in test_cloud_routes.py
(`test_provider_fault_fails_over_loses_nothing_and_recovers`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.disks import fill
from tests.helpers.pipeline import connect_push, send, wait_states

FINAL = {"sent", "delivered"}


async def _metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _states(http: aiohttp.ClientSession, base: str, ids: list[str]) -> list[dict[str, Any]]:
    recipients = []
    for message_id in ids:
        async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
            assert resp.status == 200
            recipients.extend((await resp.json())["recipients"])
    return recipients


@pytest.mark.parametrize(
    ("mode", "unconfirmed"),
    [
        # The reply is lost after the request was written: hq may hold the task.
        ("timeout", True),
        ("slow", True),
        ("reset", True),
        ("html", True),
        ("truncated_json", True),
        ("down", True),
        # hq said it took nothing.
        ("http_500", False),
        ("wrong_auth", False),
    ],
)
async def test_send_fault_fails_over_and_recovers(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    mode: str,
    unconfirmed: bool,
) -> None:
    sim = await simulator(
        fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}], branch=[{"line_id": "G201"}])
    )
    config = daemon_config(
        sim,
        ["hq", "branch"],
        tmp_path,
        routing={"retry_delay": "100ms", "line_rate_per_minute": 600, "max_attempts": 6},
        api={"duplicate_window": "0s"},
        routes=[{"via": [{"server": "hq"}, {"server": "branch"}]}],
    )
    # Polls far apart: the fault hits sends while hq still looks healthy, which is the case
    # that needs failover (a failed poll alone already takes hq out of routing).
    for server in config["servers"]:
        server["poll_interval"] = "30s"
        server["timeout"] = "1s"
    daemon = await daemon_factory(config)
    base = f"http://127.0.0.1:{daemon.port}"
    await connect_push(http, sim, daemon, ["hq", "branch"])
    # hq has taken a send before, as every server of a running fleet has: its task id tells
    # goipd where to look for the tasks of sends whose answer the fault loses.
    first = await send(http, base, {"to": ["+886900000001"], "text": "before the fault"})
    await wait_states(http, base, first["id"], FINAL)
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": mode, "delay": 5})

    ids = []
    for index in range(6):
        reply = await send(http, base, {"to": [f"+88691234{index:04d}"], "text": f"fault {index}"})
        ids.append(reply["id"])

    # While hq misbehaves, the API and /metrics answer promptly.
    started = time.monotonic()
    async with http.get(f"{base}/api/v1/lines") as resp:
        assert resp.status == 200
    await _metrics(http, base)
    assert time.monotonic() - started < 2.0

    async def all_final() -> bool:
        return all(r["state"] in FINAL for r in await _states(http, base, ids))

    async def settled_or_held_on_hq() -> bool:
        # A send whose answer hq lost stays claimed on hq until hq says whether it stored the
        # task; one hq would not even be asked about (querysms broken too) waits for hq.
        return all(
            r["state"] in FINAL or (unconfirmed and r["server"] == "hq")
            for r in await _states(http, base, ids)
        )

    await eventually(settled_or_held_on_hq, 20, f"every recipient sent or held despite {mode}")
    if unconfirmed:
        await control(http, sim, "PUT", "servers/hq/fault", {"mode": "none"})
    await eventually(all_final, 30, f"every recipient sent after hq {mode}")
    recipients = await _states(http, base, ids)
    metrics = await _metrics(http, base)
    # Every recipient has exactly one task, on hq or branch, from the simulator's own record.
    tasks = [
        row["number"]
        for server in ("hq", "branch")
        for row in await control(http, sim, "GET", f"servers/{server}/tasks")
        if row["number"] != "+886900000001"
    ]
    assert sorted(tasks) == sorted(r["to"] for r in recipients), tasks
    checked = sum(
        sample(metrics, "goipd_send_verifications_total", server="hq", result=result) or 0
        for result in ("adopted", "requeued")
    )
    if unconfirmed:
        # Looked for on hq before anything was sent again: adopted where hq had stored the
        # task, queued again (and counted ambiguous) where it provably had not.
        assert checked >= 1
        requeued = sample(metrics, "goipd_send_verifications_total", server="hq", result="requeued")
        assert (sample(metrics, "goipd_dispatch_ambiguous_total") or 0) == (requeued or 0)
    else:
        assert checked == 0
        assert (sample(metrics, "goipd_dispatch_ambiguous_total") or 0) == 0
        assert {r["server"] for r in recipients} == {"branch"}

    # The fault clears: hq is chosen again (it is first in the route).
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "none"})
    await asyncio.sleep(1.5)  # past the retry window of the excluded line

    async def hq_used_again() -> bool:
        reply = await send(http, base, {"to": ["+886987654321"], "text": f"after {time.time()}"})
        await asyncio.sleep(0.5)
        recipients = await _states(http, base, [reply["id"]])
        return recipients[0]["server"] == "hq" and recipients[0]["state"] in FINAL

    await eventually(hq_used_again, 15, "hq used again after the fault cleared")


async def test_full_disk_answers_503_and_recovers(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    """The ledger's disk fills up: the API says 503 with a problem document instead of
    accepting what it cannot store, keeps serving reads, and accepts again once space returns."""
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101", "reg": "LOGOUT"}]))
    config = daemon_config(sim, ["hq"], tmp_path, api={"duplicate_window": "0s"})
    config["storage"] = {"url": f"sqlite:///{small_disk / 'state' / 'goipd.db'}"}
    daemon = await daemon_factory(config)
    base = f"http://127.0.0.1:{daemon.port}"
    kept = await send(http, base, {"to": ["+886912345678"], "text": "before the disk filled"})
    fill(small_disk / "filler")
    many = [f"+8869{i:08d}" for i in range(1000)]
    async with http.post(
        f"{base}/api/v1/messages", json={"to": many, "text": "private words"}
    ) as resp:
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert "private" not in problem["detail"] and "+8869" not in problem["detail"]
    async with http.get(f"{base}/api/v1/messages/{kept['id']}") as resp:
        assert resp.status == 200
    await _metrics(http, base)
    (small_disk / "filler").unlink()
    again = await send(http, base, {"to": many, "text": "after space returned"})
    assert len(again["recipients"]) == 1000
