"""SIM operations with goipd as its own process in front of the simulated SMS Server (its
`en/ussd.php` and `api.php` relays):

- balances are read by USSD soon after the lines appear, stored, shown and exported, a low one
  marked; an answer that never comes or that the pattern cannot read keeps the last good
  balance and changes nothing else (the lines stay healthy and routed to); what was read
  survives a restart without being read again;
- `goipd reboot` reboots a line's module once and refuses a second action on the line while the
  first runs; `goipd ussd` prints the carrier's answer;
- self-healing: a line stuck unregistered is rebooted once, comes back and is routed to again
  within unregistered_for plus the reboot time; a line that does not come back is rebooted once,
  not in a loop, and its failed remediation is exported (GoipdLineRemediationFailed); two
  instances on one PostgreSQL ledger reboot it once, also when the one that did dies and the
  other takes the server over.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.pipeline import message, send, sent_log
from tests.helpers.processes import (
    Goipd,
    free_port,
    goipd_cli,
    lines_of,
    metrics_of,
    process_config,
    start_process,
)

BALANCE = {
    "server": "hq",
    "code": "*101#",
    "pattern": r"NT\$(?P<balance>[0-9.,]+)",
    "low": 50,
    "schedule": "0 3 * * *",
}


async def fleet(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    lines: list[dict[str, Any]],
    command_timeout: float = 1.0,
) -> RunningSimulator:
    spec = fleet_spec(hq=lines)
    # Short relays: a line that never answers says so after 1 s, a reboot takes 1.5 s.
    spec["servers"][0].update(
        {
            "ussd_delay": 0.05,
            "ussd_timeout": 1.0,
            "command_timeout": command_timeout,
            "reboot_time": 1.5,
        }
    )
    return await simulator(spec)


async def run_goipd(
    sim: RunningSimulator,
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
    **overrides: Any,
) -> Goipd:
    port = free_port()
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        routing={"line_rate_per_minute": 600, "retry_delay": "200ms"},
        **overrides,
    )
    process = start_process(config, port, tmp_path)
    started.append(process)
    process.start()
    await process.ready(http)
    return process


async def test_balances_are_read_stored_shown_and_survive_a_restart(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    sim = await fleet(
        simulator,
        [
            {"line_id": "G101", "ussd": {"*101#": "Your balance is NT$1,234.50. Thank you"}},
            {"line_id": "G102", "ussd": {"*101#": "Balance NT$12.00, valid to 2027-01-31"}},
            {"line_id": "G103", "responds": False},
            {"line_id": "G104", "ussd": {"*101#": "System busy, try later"}},
        ],
    )
    process = await run_goipd(sim, tmp_path, started, http, balances={"checks": [BALANCE]})

    async def all_read() -> bool:
        lines = await lines_of(http, process)
        return all(lines[line]["balance"] is not None for line in ("G101", "G102", "G103", "G104"))

    await eventually(all_read, 20, "every line's balance read once")
    lines = await lines_of(http, process)
    assert lines["G101"]["balance"]["value"] == 1234.5
    assert lines["G101"]["balance"]["answer"] == "Your balance is NT$1,234.50. Thank you"
    assert (lines["G101"]["balance"]["is_low"], lines["G102"]["balance"]["is_low"]) == (
        False,
        True,
    )
    assert lines["G103"]["balance"]["value"] is None
    assert lines["G103"]["balance"]["error"]["reason"] == "no_response"
    assert lines["G104"]["balance"]["error"]["reason"] == "balance_unreadable"
    # An answer that never comes, or that cannot be read, changes nothing else.
    assert all(line["healthy"] for line in lines.values())
    metrics = await metrics_of(http, process)
    assert sample(metrics, "goipd_line_balance", server="hq", line="G102") == 12.0
    assert sample(metrics, "goipd_line_balance_low_threshold", server="hq", line="G102") == 50.0
    assert (
        sample(
            metrics,
            "goipd_line_balance_read_failing",
            server="hq",
            line="G103",
            reason="no_response",
        )
        == 1.0
    )
    assert sample(metrics, "goipd_balance_reads_total", server="hq", result="ok") == 2.0
    # One USSD session at a time on the server, each line asked once.
    asked = await control(http, sim, "GET", "servers/hq/ussd")
    assert sorted(entry["line"] for entry in asked) == ["G101", "G102", "G103", "G104"]

    # The answer goes bad: a read now keeps the last good balance, with the error beside it.
    await control(
        http, sim, "PATCH", "servers/hq/lines/G101", {"ussd": {"*101#": "Service unavailable"}}
    )
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    done = await asyncio.to_thread(goipd_cli, process, token, "balance", "hq", "G101")
    assert done.returncode == 1
    assert "read failed (balance_unreadable)" in done.stderr
    assert "last balance: 1234.5" in done.stderr
    reply = await send(
        http,
        f"http://127.0.0.1:{process.port}",
        {"to": "+886912345678", "text": "still routed", "route": {"server": "hq", "line": "G101"}},
    )

    async def routed() -> bool:
        found = await message(http, f"http://127.0.0.1:{process.port}", reply["id"])
        return found["recipients"][0]["submitted_at"] is not None

    await eventually(routed, 10, "the line with a failed read still routed to")
    ussd = await asyncio.to_thread(goipd_cli, process, token, "ussd", "hq", "G102", "*101#")
    assert ussd.returncode == 0, ussd.stderr
    assert ussd.stdout.strip() == "Balance NT$12.00, valid to 2027-01-31"

    # A restart shows what was read, from the ledger, without reading it again.
    before = len(await control(http, sim, "GET", "servers/hq/ussd"))
    assert process.stop() == 0
    process.start()
    await process.ready(http)
    lines = await lines_of(http, process)
    assert lines["G102"]["balance"]["value"] == 12.0
    assert lines["G101"]["balance"]["value"] == 1234.5
    assert lines["G101"]["balance"]["error"]["reason"] == "balance_unreadable"
    await asyncio.sleep(1.0)
    assert len(await control(http, sim, "GET", "servers/hq/ussd")) == before


async def test_reboot_by_hand_once_and_one_action_per_line(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    # The device behind G102 does not answer: api.php says so after 4 s.
    sim = await fleet(simulator, [{"line_id": "G101"}, {"line_id": "G102", "responds": False}], 4.0)
    process = await run_goipd(sim, tmp_path, started, http)
    base = f"http://127.0.0.1:{process.port}"
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    first = asyncio.create_task(_status(http.post(f"{base}/api/v1/lines/hq/G102/reboot", json={})))
    await asyncio.sleep(0.3)
    second = await asyncio.to_thread(goipd_cli, process, token, "reboot", "hq", "G102")
    # Refused while the first runs; the first fails with the server's time out.
    assert second.returncode == 1
    assert "error 409: another action on hq/G102 is under way" in second.stderr
    assert await first == 502
    done = await asyncio.to_thread(goipd_cli, process, token, "reboot", "hq", "G101")
    assert done.returncode == 0, done.stderr
    assert "rebooting the module of hq/G101: OK" in done.stdout
    commands = await control(http, sim, "GET", "servers/hq/commands")
    assert [(c["line"], c["cmd"]) for c in commands] == [
        ("G102", "svr_reboot_module"),
        ("G101", "svr_reboot_module"),
    ]

    async def offline_then_back() -> bool:
        return (await lines_of(http, process))["G101"]["registered"]

    await asyncio.sleep(0.5)
    await eventually(offline_then_back, 10, "G101 registered again after its reboot")
    metrics = await metrics_of(http, process)
    assert (
        sample(
            metrics, "goipd_line_actions_total", server="hq", action="reboot_module", result="ok"
        )
        == 1
    )
    async with http.post(f"{base}/api/v1/lines/hq/G999/reboot", json={}) as resp:
        assert resp.status == 404
    async with http.post(f"{base}/api/v1/lines/hq/G101/reboot", json={"device": "yes"}) as resp:
        assert resp.status == 422


async def _status(request: Any) -> int:
    async with request as resp:
        return int(resp.status)


async def test_stuck_lines_are_rebooted_once_and_come_back_or_page(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    sim = await fleet(
        simulator,
        [
            {"line_id": "G101"},
            {"line_id": "G105", "reg": "LOGOUT", "reboot_result": "registered"},
            {"line_id": "G106", "reg": "LOGOUT", "reboot_result": "unregistered"},
        ],
    )
    stuck_for = 2.0
    process = await run_goipd(
        sim,
        tmp_path,
        started,
        http,
        remediation={
            "enabled": True,
            "unregistered_for": f"{stuck_for}s",
            "recovery_wait": "5s",
            "cooldown": "1h",
        },
    )
    began = time.monotonic()
    base = f"http://127.0.0.1:{process.port}"

    async def healed() -> bool:
        line = (await lines_of(http, process))["G105"]
        return line["healthy"] and (line["remediation"] or {}).get("result") == "recovered"

    # unregistered_for, a look every 2 s, the reboot (1.5 s) and a poll (1 s), with slack.
    await eventually(healed, stuck_for + 2 + 1.5 + 1 + 4, "G105 rebooted and back")
    reply = await send(
        http,
        base,
        {"to": "+886912345678", "text": "back", "route": {"server": "hq", "line": "G105"}},
    )

    async def routed() -> bool:
        return (await message(http, base, reply["id"]))["recipients"][0]["submitted_at"] is not None

    await eventually(routed, 5, "the healed line routed to again")
    assert "886912345678" in {e["number"].lstrip("+") for e in await sent_log(http, sim, "hq")}

    async def failed() -> bool:
        line = (await lines_of(http, process))["G106"]
        return (line["remediation"] or {}).get("result") == "failed"

    await eventually(failed, 20, "G106's remediation failed")
    metrics = await metrics_of(http, process)
    assert sample(metrics, "goipd_line_remediation_failed", server="hq", line="G106") == 1.0
    assert sample(metrics, "goipd_line_remediations_total", server="hq", result="recovered") == 1
    assert sample(metrics, "goipd_line_remediations_total", server="hq", result="failed") == 1
    # Still stuck, but within the cooldown: no second reboot, however long it stays so.
    await asyncio.sleep(4)
    commands = await control(http, sim, "GET", "servers/hq/commands")
    assert sorted(c["line"] for c in commands) == ["G105", "G106"]
    assert time.monotonic() - began < 60
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    listed = await asyncio.to_thread(goipd_cli, process, token, "lines")
    assert "reboot_module failed" in listed.stdout


async def test_two_instances_on_one_postgresql_never_reboot_one_incident_twice(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    sim = await fleet(
        simulator,
        [
            {"line_id": "G101"},
            {"line_id": "G105", "reg": "LOGOUT", "reboot_result": "unregistered"},
        ],
    )
    schema = f"test_{uuid.uuid4().hex[:12]}"
    storage = {"url": PG_URL, "pg_schema": schema}
    remediation = {
        "enabled": True,
        "unregistered_for": "1s",
        "recovery_wait": "3s",
        "cooldown": "1h",
    }
    try:
        processes = []
        for name in ("a", "b"):
            port = free_port()
            config = process_config(
                sim,
                port,
                storage,
                remediation=remediation,
                ha={"instance_id": name, "lease_ttl": "2s"},
            )
            process = start_process(config, port, tmp_path, name=name)
            started.append(process)
            process.start()
            processes.append(process)
        for process in processes:
            await process.ready(http)

        async def failed() -> bool:
            line = (await lines_of(http, processes[0]))["G105"]
            return (line["remediation"] or {}).get("result") == "failed"

        await eventually(failed, 20, "G105's remediation failed")
        # The instance that polled hq dies; the other takes the server over and sees the line
        # still stuck: within the cooldown it does not reboot it again.
        started_by = [
            sample(
                await metrics_of(http, process),
                "goipd_line_remediations_total",
                server="hq",
                result="started",
            )
            for process in processes
        ]
        assert sorted(count or 0 for count in started_by) == [0, 1]
        owner = processes[0] if started_by[0] else processes[1]
        owner.kill()
        other = processes[1 - processes.index(owner)]

        async def took_over() -> bool:
            return (
                sample(await metrics_of(http, other), "goipd_instance_leader", server="hq") == 1.0
            )

        await eventually(took_over, 15, "the other instance polls hq")
        await asyncio.sleep(4)
        commands = await control(http, sim, "GET", "servers/hq/commands")
        assert [(c["line"], c["cmd"]) for c in commands] == [("G105", "svr_reboot_module")]
        line = (await lines_of(http, other))["G105"]
        assert line["remediation"]["result"] == "failed"
    finally:
        for process in started:
            process.ensure_dead()  # before the schema goes: a drop under them can deadlock
        await PostgresLedger(PG_URL, schema=schema).drop_schema()
