"""The smsgo account the client and simulator tests use, a client for it, and goipd's side of
the pushes (delivery reports and replies)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import SecretStr

from goipd.config import SmsgoSettings
from goipd.sim.smsgo import RunningSmsgoSim
from goipd.upstream.smsgo import SmsgoProvider, parse_report, report_ack

PASSWORD = "s3cret-smsgo-pw"
TOKEN = "hook-token-0123456789"


def make_provider(sim: RunningSmsgoSim, timeout: str = "2s", **kwargs: Any) -> SmsgoProvider:
    settings_ = SmsgoSettings(
        username="goipd", url=sim.url, backup_url=sim.backup_url, timeout=timeout
    )
    return SmsgoProvider(settings_, SecretStr(kwargs.pop("password", PASSWORD)), **kwargs)


class Receiver:
    """goipd's side of the pushes, as the lead's hooks answer them (or, in `mode`, don't)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, str]] = []
        self.replies: list[dict[str, str]] = []
        self.mode = "ack"
        self.url = ""

    async def report(self, request: web.Request) -> web.Response:
        query = {k: v for k, v in request.query.items()}
        self.reports.append(query)
        status = parse_report({k: v for k, v in query.items() if k != "token"})
        if self.mode == "status_500":
            return web.Response(status=500, text="oops")
        if self.mode == "wrong_body":
            return web.Response(text="OK", content_type="text/plain")
        if self.mode == "wrong_type":
            return web.Response(text=report_ack(status.upstream_id), content_type="text/html")
        return web.Response(
            text=report_ack(status.upstream_id), content_type="text/plain", charset="utf-8"
        )

    async def reply(self, request: web.Request) -> web.Response:
        self.replies.append({k: v for k, v in request.query.items()})
        return web.json_response({"status": "ok"})
