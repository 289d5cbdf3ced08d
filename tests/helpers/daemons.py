"""A goipd daemon and the simulated fleet it talks to: the API tokens, the fleet spec, the
daemon's config, and the simulator's control API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from goipd.sim.goip import RunningSimulator

API_TOKEN = "test-token-0123456789abcdef"
POLL = 0.5
"""Poll interval used by tests; assertions allow one interval plus the request timeout."""


def fleet_spec(push_base: str | None = None, **servers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": name,
                "username": "root",
                "password": f"pw-{name}",
                "lines": lines,
                "send_delay": 0.02,
                "status_push_url": (
                    f"{push_base}/hooks/goip/{name}/status?token=hook-{name}-0123456789"
                    if push_base
                    else None
                ),
                "inbound_push_url": (
                    f"{push_base}/hooks/goip/{name}/inbound?token=hook-{name}-0123456789"
                    if push_base
                    else None
                ),
            }
            for name, lines in servers.items()
        ]
    }


def daemon_config(
    sim: RunningSimulator, names: list[str], tmp_path: Path, **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0", "api_tokens": [API_TOKEN]},
        "storage": {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        "logging": {"level": "debug", "format": "json"},
        "polling": {"jitter": 0.0, "backoff_max": "1s"},
        "reconcile": {"interval": "1s", "query_after": "2s", "report_deadline": "30s"},
        "routing": {"retry_delay": "200ms"},
        "servers": [
            {
                "name": name,
                "url": sim.base_url(name),
                "username": "root",
                "password": f"pw-{name}",
                "poll_interval": f"{int(POLL * 1000)}ms",
                "timeout": "300ms",
                # Short, so tests of slow servers stay fast (goipd warns: below 15 s).
                "send_timeout": "1s",
                "hook_token": f"hook-{name}-0123456789",
            }
            for name in names
        ],
    }
    for key, value in overrides.items():
        config[key] = value
    return config


async def control(
    session: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str, body: Any = None
) -> Any:
    url = f"http://127.0.0.1:{sim.port}/_control/{path}"
    async with session.request(method, url, json=body) as resp:
        assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()


OTHER_TOKEN = "another-token-0123456789abcdef"
