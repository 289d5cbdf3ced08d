"""The one door into the ledger: identical requests in flight together are accepted once (the
flood guard decides inside the accept transaction)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.daemons import daemon_config


async def test_identical_requests_in_flight_together_are_accepted_once(
    simulator: Any, daemon_factory: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await simulator({"servers": [{"name": "hq", "username": "root", "password": "pw-hq"}]})
    config = daemon_config(sim, ["hq"], tmp_path, api={"duplicate_window": "10m"})
    daemon = await daemon_factory(config)
    url = f"http://127.0.0.1:{daemon.port}/api/v1/messages"
    body = {"to": ["+886912345678"], "text": "your code is 4321"}

    async def post() -> tuple[int, Any]:
        async with http.post(url, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    answers = await asyncio.gather(*(post() for _ in range(6)))
    accepted = [reply for status, reply in answers if status == 202]
    assert len(accepted) == 1, answers
    first = accepted[0]["id"]
    for status, reply in answers:
        if status != 202:
            assert status == 409
            assert reply["duplicate_of"] == first
            assert reply["detail"] == (
                f"the same text went to +886912345678 less than 10m ago (message {first}); "
                "the flood guard refuses repeats (api.duplicate_window)"
            )
    stored = await daemon.ledger.list_messages(None, None, 10, None)
    assert [m.id for m in stored] == [first]
