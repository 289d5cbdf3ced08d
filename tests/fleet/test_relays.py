"""The SMS Server's relay clients across a reload (goipd/fleet/relays.py), against the simulated
server over loopback: an unchanged server keeps its clients; a server whose settings changed
gets new ones, and a USSD session the old client opened still holds the server's turn, so the
new client's first session starts only after it ended (two sessions started together would get
each other's answers); a command the old client has open on a line holds that line likewise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from pydantic import SecretStr

from goipd.config import Server
from goipd.fleet.relays import Relays
from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import fleet_spec


async def test_a_reload_keeps_the_servers_ussd_turns(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
) -> None:
    spec = fleet_spec(
        hq=[
            {"line_id": "G101", "ussd": {"*101#": "first"}},
            {"line_id": "G102", "ussd": {"*101#": "second"}},
            {"line_id": "G103", "responds": False},
        ]
    )
    spec["servers"][0].update({"ussd_delay": 1.0, "command_timeout": 1.0})
    sim = await simulator(spec)
    server = Server(
        name="hq",
        url=sim.base_url("hq"),
        username="root",
        password=SecretStr("pw-hq"),
        poll_interval=15.0,
        timeout=5.0,
        hook_token=None,
        hook_allow=(),
        groups={},
    )
    relays = Relays()
    assert relays.configure({"hq": server}, 30.0) == []
    old = relays.ussd["hq"]
    assert relays.configure({"hq": server}, 30.0) == []
    assert relays.ussd["hq"] is old  # unchanged: the same clients
    try:
        started = time.monotonic()
        first = asyncio.create_task(old.run("G101", "*101#"))
        command = asyncio.create_task(relays.commands["hq"].reboot_module("G103"))
        await asyncio.sleep(0.2)
        retired = relays.configure({"hq": replace(server, send_timeout=20.0)}, 30.0)
        assert old in retired and relays.ussd["hq"] is not old
        # The old client's command on G103 still holds that line's turn for the new client.
        assert relays.commands["hq"].busy("G103")
        await asyncio.gather(command, return_exceptions=True)
        second = await relays.ussd["hq"].run("G102", "*101#")
        answered = time.monotonic() - started
        assert (await first).text == "first"
        assert second.text == "second"
        # The second session started after the first had ended and a second had passed.
        assert answered >= 1.0 + 1.0 + 1.0 - 0.1, answered
    finally:
        for client in retired:
            await client.close()
        await relays.close()
