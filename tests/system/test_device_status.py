"""Signal and SIM identity from the GoIP devices, with goipd as its own process in front of the
simulated SMS Server and its devices' web status pages (not well-formed XML, bare-LF HTTP):

- each port's signal is exported on the line the config maps the port to, from a page with HTML
  inside its values and a raw `&` in an operator's name; CSQ 99 exports no signal;
- a change at the device (a weaker signal, a SIM taken out) shows in the metrics, the API and
  `goipd lines` within one device poll;
- a device that stops answering, or refuses goipd's login, is a device poll error: its up gauge
  drops, the failed polls are counted by reason, and its lines' querylines state and health
  are untouched and they are still routed to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import API_TOKEN, control, fleet_spec
from tests.helpers.pipeline import message, send
from tests.helpers.processes import (
    Goipd,
    free_port,
    goipd_cli,
    lines_of,
    metrics_of,
    process_config,
    start_process,
)

POLL = 1.0
"""The devices' poll_interval in these tests (the shortest the config allows)."""
WITHIN_A_POLL = 2 * POLL + 4.0
"""A change shows within one device poll; twice that and some slack for a loaded machine."""


def routing_view(line: dict[str, Any]) -> tuple[Any, ...]:
    """What querylines and routing made of a line: a device poll must not move any of it."""
    return (
        line["state"],
        line["online"],
        line["registered"],
        line["healthy"],
        line["quarantined"],
        line["last_change"],
    )


async def test_signal_and_sim_from_the_devices_status_page(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    tmp_path: Path,
    started: list[Goipd],
    http: aiohttp.ClientSession,
) -> None:
    spec = fleet_spec(
        hq=[
            {"line_id": "G101", "csq": 31, "operator": "AT&T"},
            {"line_id": "G102", "csq": 12, "provider": "Chunghwa"},
            {"line_id": "G103", "csq": 99},
            {"line_id": "G104"},
        ]
    )
    # Ports 1-3 of one GoIP; G104 is on no device goipd knows of. The page is framed by the
    # close of the connection, its header lines end in a bare LF.
    spec["servers"][0]["devices"] = [
        {
            "name": "goip-a",
            "lines": ["G101", "G102", "G103"],
            "username": "admin",
            "password": "dev-secret-pw",
            "framing": "close",
        }
    ]
    sim = await simulator(spec)
    port = free_port()
    server = process_config(sim, port, {})["servers"][0]
    server["devices"] = [
        {
            "name": "goip-a",
            "url": sim.device_url("goip-a"),
            "username": "admin",
            "password": "dev-secret-pw",
            "lines": {1: "G101", 2: "G102", 3: "G103"},
            "poll_interval": f"{POLL:g}s",
            "timeout": "500ms",
        }
    ]
    config = process_config(
        sim,
        port,
        {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        routing={"line_rate_per_minute": 600, "retry_delay": "200ms"},
        servers=[server],
    )
    process = start_process(config, port, tmp_path)
    started.append(process)
    process.start()
    await process.ready(http)
    base = f"http://127.0.0.1:{process.port}"

    async def polled() -> bool:
        text = await metrics_of(http, process)
        return sample(text, "goipd_device_up", server="hq", device="goip-a") == 1.0

    await eventually(polled, WITHIN_A_POLL, "goip-a polled")
    text = await metrics_of(http, process)
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") == -51.0
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G102") == -89.0
    assert sample(text, "goipd_line_signal_csq", server="hq", line="G102") == 12.0
    # CSQ 99 is unknown: no signal; G104 has no device.
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G103") is None
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G104") is None
    assert sample(text, "goipd_line_sim_present", server="hq", line="G103") == 1.0
    assert sample(text, "goipd_line_module_on", server="hq", line="G101") == 1.0
    assert (
        sample(text, "goipd_line_operator_info", server="hq", line="G101", operator="AT&T") == 1.0
    )
    assert (
        sample(text, "goipd_line_operator_info", server="hq", line="G102", operator="Chunghwa")
        == 1.0
    )
    lines = await lines_of(http, process)
    assert lines["G104"]["device"] is None
    device = lines["G101"]["device"]
    assert device["device"] == "goip-a" and device["port"] == 1
    assert (device["signal_dbm"], device["csq"], device["operator"]) == (-51, 31, "AT&T")
    assert device["weak_signal"] is False
    assert (device["sim_present"], device["module_on"], device["gsm_registered"]) == (
        True,
        True,
        True,
    )
    assert device["error"] is None and device["stale"] is False
    before = {name: routing_view(line) for name, line in lines.items()}

    # At the device: G101's signal drops, G102's SIM is taken out.
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"csq": 3})
    await control(http, sim, "PATCH", "servers/hq/lines/G102", {"sim_present": False})

    async def followed() -> bool:
        text = await metrics_of(http, process)
        return (
            sample(text, "goipd_line_signal_dbm", server="hq", line="G101") == -107.0
            and sample(text, "goipd_line_sim_present", server="hq", line="G102") == 0.0
        )

    await eventually(followed, WITHIN_A_POLL, "the metrics follow the device within a poll")
    lines = await lines_of(http, process)
    assert lines["G101"]["device"]["signal_dbm"] == -107
    assert lines["G101"]["device"]["weak_signal"] is True
    assert lines["G102"]["device"]["sim_present"] is False
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    shown = await asyncio.to_thread(goipd_cli, process, token, "lines")
    assert shown.returncode == 0, shown.stderr
    header = next(row for row in shown.stdout.splitlines() if row.startswith("SERVER"))
    assert header.split()[6:8] == ["BALANCE", "SIGNAL"]
    rows = {row.split()[1]: row for row in shown.stdout.splitlines() if row.startswith("hq ")}
    assert "-107 dBm WEAK" in rows["G101"]
    assert "no SIM" in rows["G102"]
    assert rows["G104"].split()[:8] == ["hq", "G104", "registered", "yes", "∞", "∞", "-", "-"]

    # The device stops answering (the connection is dropped), then refuses goipd's login.
    await control(http, sim, "PATCH", "devices/goip-a", {"fault": "reset"})

    async def down() -> bool:
        text = await metrics_of(http, process)
        return sample(text, "goipd_device_up", server="hq", device="goip-a") == 0.0

    await eventually(down, WITHIN_A_POLL, "goip-a down")
    await control(http, sim, "PATCH", "devices/goip-a", {"fault": "none", "password": "changed"})

    async def refused() -> bool:
        text = await metrics_of(http, process)
        return (
            sample(text, "goipd_device_polls_total", server="hq", device="goip-a", result="auth")
            or 0
        ) >= 1

    await eventually(refused, WITHIN_A_POLL, "goip-a's 401 counted")
    text = await metrics_of(http, process)
    assert sample(text, "goipd_device_up", server="hq", device="goip-a") == 0.0
    assert (
        sample(
            text, "goipd_device_polls_total", server="hq", device="goip-a", result="disconnected"
        )
        or 0
    ) >= 1
    assert (
        sample(text, "goipd_device_polls_total", server="hq", device="goip-a", result="ok") or 0
    ) >= 2
    lines = await lines_of(http, process)
    assert lines["G101"]["device"]["error"]["reason"] == "auth"
    # The last readings stay shown beside the error.
    assert lines["G101"]["device"]["signal_dbm"] == -107
    # Nothing of the lines' own state moved, and they are still routed to.
    assert {name: routing_view(line) for name, line in lines.items()} == before
    reply = await send(
        http,
        base,
        {"to": "+886912345678", "text": "still routed", "route": {"server": "hq", "line": "G101"}},
    )

    async def routed() -> bool:
        found = await message(http, base, reply["id"])
        return found["recipients"][0]["submitted_at"] is not None

    await eventually(routed, 10, "a line of the unreachable device still routed to")
    # The device's password is in no log line and no error goipd shows.
    assert "dev-secret-pw" not in process.log.read_text()
    assert "dev-secret-pw" not in str(lines)
