"""/metrics is gzipped when the scraper asks for it, and plain otherwise."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.checks import eventually
from tests.helpers.daemons import daemon_config


async def test_metrics_endpoint_gzips_when_asked(
    simulator: Any, daemon_factory: Any, tmp_path: Path
) -> None:
    sim = await simulator({"servers": [{"name": "hq", "username": "root", "password": "pw-hq"}]})
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))

    async def warmed_up() -> bool:
        # Rendered once in the background after the first poll round, before any scrape.
        return "hq" in daemon.fleet_collector._servers

    await eventually(warmed_up, 5.0, "the /metrics text rendered after the first poll round")
    url = f"http://127.0.0.1:{daemon.port}/metrics"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Vary"] == "Accept-Encoding"
            zipped = gzip.decompress(await resp.read()).decode()
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            plain = await resp.text()
        async with session.get(url, headers={"Accept-Encoding": "gzip;q=0, br"}) as resp:
            assert "Content-Encoding" not in resp.headers
    for text in (zipped, plain):
        assert 'goipd_server_up{server="hq"} 1.0' in text
        assert text.startswith("# HELP ")
