"""What the cloud-provider suites (smsgo, PaaSoo, c123) share: the verdicts every client gives
the simulators' transport faults, a URL nothing listens on, and a loopback HTTP endpoint that
plays goipd's side of the pushes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web

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
