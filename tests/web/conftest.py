"""A daemon without a fleet, for the tests of the API's request handling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from goipd.app import Daemon
from tests.helpers.daemons import API_TOKEN, OTHER_TOKEN


@pytest.fixture
async def base(daemon_factory: Callable[..., Awaitable[Daemon]], tmp_path: Path) -> str:
    daemon = await daemon_factory(
        {
            "http": {
                "listen": "127.0.0.1:0",
                "api_tokens": [API_TOKEN, OTHER_TOKEN],
                "max_body_bytes": 4096,
            },
            "storage": {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
            "api": {"max_recipients": 3, "max_text_chars": 200, "duplicate_window": "10m"},
            "logging": {"format": "json"},
        }
    )
    return f"http://127.0.0.1:{daemon.port}"
