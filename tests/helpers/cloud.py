"""What the cloud-provider suites (smsgo, PaaSoo, c123) share: the verdicts every client gives
the simulators' transport faults, a URL nothing listens on, a loopback HTTP endpoint that
plays goipd's side of the pushes, and the three simulators as goipd's configured providers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from goipd.sim.c123 import RunningC123Sim
from goipd.sim.paasoo import RunningPaasooSim
from goipd.sim.smsgo import RunningSmsgoSim
from goipd.upstream.cloud import Verdict

TRANSPORT_FAULTS: Final = [
    ("http_500", Verdict.RETRY, "http_status"),
    ("html", Verdict.RETRY, "parse"),
    ("truncated", Verdict.RETRY, "parse"),
    ("reset", Verdict.RETRY, "connect"),
]
"""(simulator fault mode, verdict, code) of a send: no usable answer is RETRY, with the
ErrorReason as code."""


def refused_url() -> str:
    """A loopback URL nothing listens on: a port bound and let go again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serve_routes(*routes: web.RouteDef) -> AsyncIterator[str]:
    """`routes` served on a free loopback port, for as long as the block runs: the base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


SMSGO_HOOK = "smsgo-hook-0123456789abcdef"
PAASOO_HOOK = "paasoo-hook-0123456789abcdef"


@dataclass
class Clouds:
    smsgo: RunningSmsgoSim
    paasoo: RunningPaasooSim
    c123: RunningC123Sim


def providers(clouds: Clouds) -> dict[str, Any]:
    return {
        "smsgo": {
            "username": "goipd",
            "password": "smsgo-secret",
            "url": clouds.smsgo.url,
            "backup_url": clouds.smsgo.backup_url,
            "timeout": "1s",
            "balance_interval": "500ms",
            "hook_token": SMSGO_HOOK,
        },
        "paasoo": {
            "key": "paasoo-key",
            "secret": "paasoo-secret",
            "url": clouds.paasoo.url,
            "timeout": "1s",
            "hook_token": PAASOO_HOOK,
        },
        "c123": {
            "uid": "9999",
            "password": "c123-password",
            "url": clouds.c123.url,
            "timeout": "1s",
            "balance_interval": "500ms",
        },
    }
