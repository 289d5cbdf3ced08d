"""The PaaSoo account the client and simulator tests use, a client for it, and goipd's side of
the DLR push."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import SecretStr

from goipd.config import PaasooSettings
from goipd.upstream.cloud import CloudSendResult, CloudStatus
from goipd.upstream.paasoo import PaasooProvider, parse_report

KEY = "acct-key-42"
SECRET = "s3cr3t-paasoo-value"

DOC_FAILURE = '{"status_code":"illegal secret.,"status":"401"}'


def make_provider(url: str, secret: str = SECRET, timeout: str = "2s") -> PaasooProvider:
    settings = PaasooSettings(key=KEY, secret=SecretStr(secret), url=url, timeout=timeout)
    return PaasooProvider(settings, SecretStr(secret))


class Receiver:
    """goipd's side of the DLR push, as far as this test needs it: a real HTTP endpoint."""

    def __init__(self) -> None:
        self.reports: list[CloudStatus] = []
        self.raw: list[dict[str, str]] = []
        self.fail_first = 0
        self.url = ""
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.raw.append(dict(request.query))
        self.reports.append(parse_report(request.query))
        self.arrived.set()
        return web.Response(text="ok")


async def send_one(provider: PaasooProvider, text: str = "hi") -> CloudSendResult:
    (result,) = await provider.send(["+6588888888"], text)
    return result
