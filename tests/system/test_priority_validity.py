"""Priority and validity with goipd as its own process in front of the simulated fleet:

- a high-priority message sent behind 10,000 queued normal recipients that no line can take is
  submitted in the first dispatch round once lines are back;
- a recipient whose validity ends while no line can take it expires and is never sent (the
  simulator never sees it), while the message next to it without a validity is sent once a
  line is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import control, fleet_spec
from tests.helpers.pipeline import message, send, sent_log
from tests.helpers.processes import (
    Goipd,
    free_port,
    process_config,
    recipient_states,
    start_process,
)

QUEUED = 10_000
LINES = ("G101", "G102")
PRIORITY = 3


async def run_goipd(
    sim: RunningSimulator, tmp_path: Path, started: list[Goipd], http: aiohttp.ClientSession
) -> str:
    port = free_port()
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        routing={"line_rate_per_minute": 600, "retry_delay": "200ms"},
        api={"duplicate_window": "0s", "max_recipients": 1000},
    )
    process = start_process(config, port, tmp_path)
    started.append(process)
    process.start()
    await process.ready(http)
    return f"http://127.0.0.1:{port}"


async def lines_usable(http: aiohttp.ClientSession, base: str, usable: bool) -> None:
    async def seen() -> bool:
        async with http.get(f"{base}/api/v1/lines") as resp:
            body = await resp.json()
        return bool(body["lines"]) and all(line["healthy"] is usable for line in body["lines"])

    await eventually(seen, 10, f"goipd sees every line {'usable' if usable else 'down'}")


def when(text: str | None) -> float:
    assert text is not None
    return datetime.fromisoformat(text).timestamp()


async def test_a_high_priority_message_goes_before_10000_queued_normal_recipients(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    # The lines are logged out: everything sent waits, as behind a fleet out of capacity.
    sim = await simulator(fleet_spec(hq=[{"line_id": line, "reg": "LOGOUT"} for line in LINES]))
    base = await run_goipd(sim, tmp_path, started, http)
    await lines_usable(http, base, False)
    for batch in range(QUEUED // 1000):
        numbers = [f"+8869{batch:02d}{i:06d}" for i in range(1000)]
        await send(http, base, {"to": numbers, "text": f"newsletter {batch}"})
    urgent = await send(
        http, base, {"to": "+886987654321", "text": "your code is 4711", "priority": PRIORITY}
    )
    assert urgent["priority"] == PRIORITY
    # Several dispatch passes find no line for any of them.
    await asyncio.sleep(2)
    for line in LINES:
        await control(http, sim, "PATCH", f"servers/hq/lines/{line}", {"reg": "LOGIN"})
    back = time.time()

    async def submitted() -> bool:
        found = await message(http, base, urgent["id"])
        return found["recipients"][0]["submitted_at"] is not None

    await eventually(submitted, 10, "the urgent message submitted")
    found = (await message(http, base, urgent["id"]))["recipients"][0]
    submitted_at = when(found["submitted_at"])
    states = await recipient_states(http, int(base.rpartition(":")[2]))
    before = [
        r
        for number, r in states.items()
        if number != "+886987654321"
        and r["submitted_at"] is not None
        and when(r["submitted_at"]) < submitted_at
    ]
    # In the first dispatch round once lines are back: at most that round's other sends
    # (a round takes up to 500 due recipients) finish before its own.
    assert len(before) < 500, f"{len(before)} normal recipients went first"
    # Lines are seen back within a poll interval (1 s), and the round follows.
    assert submitted_at - back < 3.0


async def test_a_recipient_past_its_validity_is_never_sent(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    base = await run_goipd(sim, tmp_path, started, http)
    await lines_usable(http, base, True)
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT"})
    await lines_usable(http, base, False)
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    doomed = await send(
        http,
        base,
        {
            "to": ["+886911000001", "+886911000002", "+886911000003"],
            "text": "sale ends at noon",
            "expires_at": expires_at.isoformat(),
        },
    )
    await send(http, base, {"to": "+886911000004", "text": "your parcel arrived"})

    async def expired() -> bool:
        found = await message(http, base, doomed["id"])
        return all(r["state"] == "expired" for r in found["recipients"])

    await eventually(expired, 6, "the recipients past their validity expired")
    assert time.time() >= expires_at.timestamp()
    found = await message(http, base, doomed["id"])
    for recipient in found["recipients"]:
        assert recipient["error"]["code"] == "validity"
        assert recipient["submitted_at"] is None
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGIN"})

    numbers: set[str] = set()

    async def lasting_sent() -> bool:
        numbers.update(entry["number"].lstrip("+") for entry in await sent_log(http, sim, "hq"))
        return "886911000004" in numbers

    await eventually(lasting_sent, 10, "the message without a validity sent")
    assert not numbers & {"886911000001", "886911000002", "886911000003"}
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert sample(metrics, "goipd_recipients_expired_total", cause="validity") == 3
    # Still expired: a line coming back sends nothing of it.
    found = await message(http, base, doomed["id"])
    assert {r["state"] for r in found["recipients"]} == {"expired"}
