"""A real Prometheus scrapes goipd on loopback; when a simulated SIM logs out, the series show
it and the dead-SIM alert goes pending, then firing (the test copy of the rules uses a short
`for:`)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.processes import free_port
from tests.helpers.repo import REPO

RULES = REPO / "prometheus" / "alerts.yml"
pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (make tools installs it)"
)


def fast_rules(target: Path) -> None:
    """The shipped rules with every `for:` shortened, so the test sees pending and firing."""
    text = re.sub(r"^(\s+for:\s*)\S+", r"\g<1>2s", RULES.read_text(), flags=re.MULTILINE)
    target.write_text(text)


async def query(http: aiohttp.ClientSession, base: str, path: str) -> Any:
    async with http.get(f"{base}{path}") as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]


async def test_real_prometheus_sees_a_dead_sim_and_fires_the_alert(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))
    rules = tmp_path / "alerts.yml"
    fast_rules(rules)
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        "job_name": "goipd",
                        "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def series(expr: str) -> list[dict[str, Any]]:
                return (await query(http, base, f"/api/v1/query?query={expr}"))["result"]

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if await series('goipd_line_registered{line="G101"}'):
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("Prometheus never scraped goipd")
            assert (await series("up"))[0]["value"][1] == "1"
            await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT"})
            seen: set[str] = set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "firing" not in seen:
                alerts = (await query(http, base, "/api/v1/alerts"))["alerts"]
                for alert in alerts:
                    if alert["labels"]["alertname"] == "GoipdSimDead":
                        assert alert["labels"]["line"] == "G101"
                        assert alert["labels"]["server"] == "hq"
                        assert "G101" in alert["annotations"]["description"]
                        seen.add(alert["state"])
                await asyncio.sleep(0.3)
            assert "firing" in seen, f"GoipdSimDead states seen: {seen}"
            registered = await series('goipd_line_registered{line="G101"}')
            assert registered[0]["value"][1] == "0"
            others = [
                a
                for a in (await query(http, base, "/api/v1/alerts"))["alerts"]
                if a["labels"]["alertname"] == "GoipdSimDead" and a["labels"]["line"] != "G101"
            ]
            assert others == []
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        log.close()
