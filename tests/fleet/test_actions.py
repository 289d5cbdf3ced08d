"""Actions on a line (goipd/fleet/actions.py) against the simulated SMS Server over loopback, with
two instances on one PostgreSQL ledger: a second action on a line is refused while the first
runs, on the same instance and on the other; a USSD by hand is refused while the other instance
runs a USSD session on the same server (its balance reads), and goes ahead once that ends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from goipd.fleet.actions import ActionRefused, LineActions, ussd_lease
from goipd.ledger.postgres import PostgresLedger
from goipd.metrics.catalog import Metrics
from goipd.sim.goip import RunningSimulator
from goipd.upstream.goip_commands import CommandClient
from goipd.upstream.goip_ussd import UssdClient
from tests.helpers.daemons import fleet_spec
from tests.helpers.ledgers import PG_URL, open_backend


async def test_one_action_per_line_and_one_ussd_session_per_server_across_instances(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    spec = fleet_spec(
        hq=[
            {"line_id": "G101", "ussd": {"*101#": "Balance NT$10.00"}},
            {"line_id": "G102", "responds": False},
        ]
    )
    spec["servers"][0].update({"ussd_delay": 0.05, "command_timeout": 1.0})
    sim = await simulator(spec)
    password = SecretStr("pw-hq")
    ussd = UssdClient("hq", sim.base_url("hq"), "root", password, timeout=5.0)
    commands = CommandClient("hq", sim.base_url("hq"), "root", password, timeout=5.0)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            open_backend("postgresql", tmp_path, schema) as first_ledger,
            open_backend("postgresql", tmp_path, schema) as second_ledger,
        ):
            first_ledger.instance_id = "a"
            second_ledger.instance_id = "b"
            first, second = (
                LineActions(ledger, Metrics(), {"hq": commands}.get, {"hq": ussd}.get)
                for ledger in (first_ledger, second_ledger)
            )
            # A reboot the device does not answer takes a second: meanwhile the line is busy,
            # here and on the other instance.
            running = asyncio.create_task(first.reboot("hq", "G102", device=False, asked_by="t"))
            await asyncio.sleep(0.2)
            for actions in (first, second):
                with pytest.raises(ActionRefused) as refused:
                    await actions.reboot("hq", "G102", device=False, asked_by="t")
                assert refused.value.status == 409
            assert not (await running).ok
            # Free again: the lease was released.
            again = await second.reboot("hq", "G102", device=False, asked_by="t")
            assert again.detail
            # The other instance's balance reads hold the server's USSD lease.
            assert await first_ledger.acquire_leases({ussd_lease("hq"): 60.0})
            with pytest.raises(ActionRefused) as refused:
                await second.ussd("hq", "G101", "*101#", asked_by="t")
            assert refused.value.status == 409 and "USSD session on hq" in refused.value.detail
            await first_ledger.release_leases([ussd_lease("hq")])
            answer = await second.ussd("hq", "G101", "*101#", asked_by="t")
            assert (answer.ok, answer.detail) == (True, "Balance NT$10.00")
    finally:
        await ussd.close()
        await commands.close()
        await PostgresLedger(PG_URL, schema=schema).drop_schema()
