"""goipd against the simulated fleet over loopback: every transition shows up in /metrics and
/api/v1/lines within one poll interval, and upstream faults never stop the daemon."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import POLL, control, daemon_config, fleet_spec

WITHIN = POLL + 0.3 + 0.7  # one interval + request timeout + scheduling slack


async def fetch(http: aiohttp.ClientSession, daemon: Daemon, path: str) -> Any:
    async with http.get(f"http://127.0.0.1:{daemon.port}{path}") as resp:
        assert resp.status == 200, await resp.text()
        if path == "/metrics":
            return await resp.text()
        return await resp.json()


async def line(
    http: aiohttp.ClientSession, daemon: Daemon, server: str, line_id: str
) -> dict[str, Any] | None:
    data = await fetch(http, daemon, f"/api/v1/lines?server={server}")
    return next((item for item in data["lines"] if item["line"] == line_id), None)


@pytest.fixture
async def fleet(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> tuple[RunningSimulator, Daemon]:
    sim = await simulator(
        fleet_spec(
            hq=[
                {"line_id": "G101"},
                {"line_id": "G102", "remain_sms": 856, "day_remain_sms": 2},
                {"line_id": "G103", "reg": ""},
                {"line_id": "G104", "online": False, "reg": ""},
            ],
            branch=[{"line_id": "G201"}],
        )
    )
    daemon = await daemon_factory(daemon_config(sim, ["hq", "branch"], tmp_path))
    return sim, daemon


async def test_first_poll_round_fills_registry_and_metrics(
    fleet: tuple[RunningSimulator, Daemon], http: aiohttp.ClientSession
) -> None:
    _, daemon = fleet
    async with http.get(f"http://127.0.0.1:{daemon.port}/readyz") as resp:
        assert resp.status == 200
    data = await fetch(http, daemon, "/api/v1/lines")
    states = {(item["server"], item["line"]): item["state"] for item in data["lines"]}
    assert states == {
        ("hq", "G101"): "registered",
        ("hq", "G102"): "registered",
        ("hq", "G103"): "logged_out",
        ("hq", "G104"): "offline",
        ("branch", "G201"): "registered",
    }
    metrics = await fetch(http, daemon, "/metrics")
    assert sample(metrics, "goipd_server_up", server="hq") == 1
    assert sample(metrics, "goipd_line_online", server="hq", line="G104") == 0
    assert sample(metrics, "goipd_line_registered", server="hq", line="G103") == 0
    assert sample(metrics, "goipd_line_remaining_sms", server="hq", line="G102") == 856
    assert sample(metrics, "goipd_line_day_remaining_sms", server="hq", line="G102") == 2
    # Unlimited quotas: no remaining series, an explicit unlimited flag instead.
    assert sample(metrics, "goipd_line_remaining_sms", server="hq", line="G101") is None
    assert sample(metrics, "goipd_line_unlimited", server="hq", line="G101", quota="day") == 1
    assert sample(metrics, "goipd_line_unlimited", server="hq", line="G102", quota="day") == 0
    assert sample(metrics, "goipd_line_healthy", server="hq", line="G101") == 1
    assert sample(metrics, "goipd_line_healthy", server="hq", line="G103") == 0
    assert sample(metrics, "goipd_server_poll_duration_seconds_count", server="hq") >= 1
    assert sample(metrics, "goipd_server_poll_errors_total", server="hq", reason="timeout") == 0
    assert sample(metrics, "process_resident_memory_bytes") is not None
    assert sample(metrics, "goipd_cms_error_info", code="331", meaning="no network service") == 1


async def test_sim_logout_offline_and_quota_show_up_within_one_interval(
    fleet: tuple[RunningSimulator, Daemon], http: aiohttp.ClientSession
) -> None:
    sim, daemon = fleet
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT"})
    await control(http, sim, "PATCH", "servers/branch/lines/G201", {"online": False})
    await control(http, sim, "PATCH", "servers/hq/lines/G102", {"day_remain_sms": 0})

    async def transitions_seen() -> bool:
        metrics = await fetch(http, daemon, "/metrics")
        return (
            sample(metrics, "goipd_line_registered", server="hq", line="G101") == 0
            and sample(metrics, "goipd_line_online", server="branch", line="G201") == 0
            and sample(metrics, "goipd_line_day_remaining_sms", server="hq", line="G102") == 0
        )

    await eventually(transitions_seen, WITHIN, "logout, offline and quota 0 in /metrics")
    metrics = await fetch(http, daemon, "/metrics")
    assert (
        sample(metrics, "goipd_line_state_changes_total", server="hq", line="G101", field="reg")
        == 1
    )
    assert (
        sample(
            metrics, "goipd_line_state_changes_total", server="branch", line="G201", field="online"
        )
        == 1
    )
    assert sample(metrics, "goipd_line_healthy", server="hq", line="G102") == 0
    changed_at = sample(
        metrics, "goipd_line_last_change_timestamp_seconds", server="hq", line="G101"
    )
    assert changed_at is not None and changed_at > 0
    g101 = await line(http, daemon, "hq", "G101")
    assert g101 is not None and g101["state"] == "logged_out" and g101["reg"] == "LOGOUT"
    g102 = await line(http, daemon, "hq", "G102")
    assert g102 is not None and g102["state"] == "quota_exhausted"
    g201 = await line(http, daemon, "branch", "G201")
    assert g201 is not None and g201["state"] == "offline"
    # ... and back.
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGIN"})

    async def logged_in_again() -> bool:
        item = await line(http, daemon, "hq", "G101")
        return item is not None and item["state"] == "registered"

    await eventually(logged_in_again, WITHIN, "G101 registered again")


async def test_line_disappearing_is_marked_gone_and_its_series_removed(
    fleet: tuple[RunningSimulator, Daemon], http: aiohttp.ClientSession
) -> None:
    sim, daemon = fleet
    await control(http, sim, "DELETE", "servers/hq/lines/G103")

    async def gone() -> bool:
        item = await line(http, daemon, "hq", "G103")
        return item is not None and item["state"] == "gone"

    await eventually(gone, WITHIN, "G103 marked gone")
    metrics = await fetch(http, daemon, "/metrics")
    assert sample(metrics, "goipd_line_online", server="hq", line="G103") is None
    assert sample(metrics, "goipd_line_online", server="hq", line="G101") == 1
    await control(http, sim, "POST", "servers/hq/lines", {"line_id": "G105"})

    async def appeared() -> bool:
        return (await line(http, daemon, "hq", "G105")) is not None

    await eventually(appeared, WITHIN, "new line G105 appears")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("timeout", "timeout"),
        ("wrong_auth", "auth"),
        ("html", "parse"),
        ("truncated_json", "parse"),
        ("http_500", "http_status"),
        # The request was written before the connection broke.
        ("reset", "disconnected"),
    ],
)
async def test_server_faults_are_classified_and_recovered(
    fleet: tuple[RunningSimulator, Daemon], http: aiohttp.ClientSession, mode: str, reason: str
) -> None:
    sim, daemon = fleet
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": mode, "delay": 2})

    async def down() -> bool:
        metrics = await fetch(http, daemon, "/metrics")
        errors = sample(metrics, "goipd_server_poll_errors_total", server="hq", reason=reason)
        return sample(metrics, "goipd_server_up", server="hq") == 0 and (errors or 0) >= 1

    await eventually(down, WITHIN, f"hq down with reason {reason}")
    # The daemon keeps serving, and the healthy server keeps being polled.
    metrics = await fetch(http, daemon, "/metrics")
    assert sample(metrics, "goipd_server_up", server="branch") == 1
    lines = await fetch(http, daemon, "/api/v1/lines?server=hq")
    assert lines["servers"][0]["last_error_reason"] == reason
    if mode == "timeout":
        # Failing servers are polled with exponential backoff: scheduled polls get skipped.
        async def backing_off() -> bool:
            metrics = await fetch(http, daemon, "/metrics")
            return (sample(metrics, "goipd_server_polls_skipped_total", server="hq") or 0) >= 1

        await eventually(backing_off, 4 * POLL + 2, "polls skipped during backoff")
    await control(http, sim, "PUT", "servers/hq/fault", {"mode": "none"})

    async def up() -> bool:
        return sample(await fetch(http, daemon, "/metrics"), "goipd_server_up", server="hq") == 1

    # Recovery can wait out one backoff step (backoff_max is 1s in tests).
    await eventually(up, WITHIN + 2.5, "hq up again after the fault cleared")


async def test_api_requires_the_bearer_token(fleet: tuple[RunningSimulator, Daemon]) -> None:
    _, daemon = fleet
    url = f"http://127.0.0.1:{daemon.port}/api/v1/lines"
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(url) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["detail"] == "missing bearer token"
        async with anonymous.get(url, headers={"Authorization": "Bearer wrong-token"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["detail"] == "invalid bearer token"
        # Operational endpoints stay open for probes and Prometheus.
        for path in ("/metrics", "/healthz", "/readyz"):
            async with anonymous.get(f"http://127.0.0.1:{daemon.port}{path}") as resp:
                assert resp.status == 200


async def test_lines_filters(
    fleet: tuple[RunningSimulator, Daemon], http: aiohttp.ClientSession
) -> None:
    _, daemon = fleet
    unhealthy = await fetch(http, daemon, "/api/v1/lines?healthy=false")
    assert {item["line"] for item in unhealthy["lines"]} == {"G103", "G104"}
    offline = await fetch(http, daemon, "/api/v1/lines?state=offline")
    assert [item["line"] for item in offline["lines"]] == ["G104"]
    async with http.get(f"http://127.0.0.1:{daemon.port}/api/v1/lines?server=nope") as resp:
        assert resp.status == 404
    async with http.get(f"http://127.0.0.1:{daemon.port}/api/v1/lines?state=dead") as resp:
        assert resp.status == 400
