"""/healthz, /readyz and /metrics: what systemd, a load balancer and Prometheus ask."""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from goipd.ledger.base import Store
from goipd.metrics import exposition
from goipd.metrics.catalog import Metrics
from goipd.web.problems import problem_response
from goipd.web.replies import json_reply

READY_WRITE_TIMEOUT = 2.0


class Probed(Protocol):
    """The daemon as the probes see it."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def ledger(self) -> Store: ...

    @property
    def ready(self) -> bool:
        """The first poll round of the SMS Servers is done."""


PROBED_KEY: web.AppKey[Probed] = web.AppKey("probed")


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[PROBED_KEY].metrics.render_async()
    headers = {"Content-Type": CONTENT_TYPE_LATEST, "Vary": "Accept-Encoding"}
    if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        # 32,000 lines are ~20 MB of text and ~1 MB gzipped.
        body = await exposition.compress(body)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() == "gzip":
            weight = params.replace(" ", "").lower()
            return not re.fullmatch(r"q=0(\.0{0,3})?", weight)
    return False


async def healthz(_request: web.Request) -> web.Response:
    return json_reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[PROBED_KEY]
    if not daemon.ready:
        return problem_response(
            503, "first poll round of the SMS Servers is not finished", title="Not ready"
        )
    try:
        write_error = await asyncio.wait_for(daemon.ledger.check_writes(), READY_WRITE_TIMEOUT)
    except TimeoutError:
        # The probe waits behind a commit that hangs: still not ready, and a prober's
        # request must not hang with it.
        write_error = daemon.ledger.write_error or "the ledger did not commit in time"
    if write_error is not None:
        return problem_response(
            503, f"the ledger cannot store writes: {write_error}", title="Not ready"
        )
    return json_reply({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
