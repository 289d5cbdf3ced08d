"""Push endpoints the cloud providers call: delivery reports (smsgo, PaaSoo) and replies (smsgo).

Providers call these with GET and the data in the query string. The hook token is either the
last path segment (`/hooks/smsgo/report/<token>`: what goipd gives smsgo, because smsgo appends
its own `?msgid=...` to the URL it was given and a query of ours could be mangled) or a `token`
query parameter (what an operator pastes into PaaSoo's console). It is checked before anything
else is read, in constant time, and an unconfigured provider looks exactly like a wrong token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import TypeVar

import structlog
from aiohttp import web
from pydantic import SecretStr

from goipd.inbound.store import store_inbound
from goipd.problem import Problem
from goipd.reports.cloud import CloudContext, HeldReports
from goipd.upstream import paasoo, smsgo
from goipd.upstream.errors import ParseError
from goipd.web.replies import json_reply

log = structlog.get_logger("goipd.web.cloud_hooks")
MAX_QUERY_BYTES = 8 * 1024
Parsed = TypeVar("Parsed")


class CloudHooks:
    def __init__(
        self,
        ctx: CloudContext,
        hook_tokens: Callable[[], Mapping[str, SecretStr | None]],
        held: HeldReports,
    ) -> None:
        self.ctx = ctx
        self.hook_tokens = hook_tokens
        self.held = held
        """Reports that came before their send was recorded (the daemon runs `held.run()`)."""

    def _authorize(self, request: web.Request, provider: str, kind: str) -> dict[str, str]:
        expected = self.hook_tokens().get(provider)
        presented = request.match_info.get("token", request.query.get("token", "")).encode()
        if expected is None or not hmac.compare_digest(
            presented, expected.get_secret_value().encode()
        ):
            self.ctx.metrics.push_reports.labels(provider, kind, "unauthorized").inc()
            log.warning("push_rejected", provider=provider, kind=kind, peer=request.remote)
            raise Problem(401, "wrong or missing hook token")
        if len(request.query_string) > MAX_QUERY_BYTES:
            self.ctx.metrics.push_reports.labels(provider, kind, "malformed").inc()
            raise Problem(414, f"query string longer than {MAX_QUERY_BYTES} bytes")
        return {k: v for k, v in request.query.items() if k != "token"}

    def _parsed(
        self,
        provider: str,
        kind: str,
        what: str,
        parse: Callable[[Mapping[str, str]], Parsed],
        query: Mapping[str, str],
    ) -> Parsed:
        try:
            return parse(query)
        except ParseError as exc:
            self.ctx.metrics.push_reports.labels(provider, kind, "malformed").inc()
            raise Problem(400, f"malformed {what}: {exc}") from None

    async def smsgo_report(self, request: web.Request) -> web.Response:
        query = self._authorize(request, "smsgo", "report")
        status = self._parsed("smsgo", "report", "smsgo delivery report", smsgo.parse_report, query)
        outcome = await self.held.apply("smsgo", status)
        self.ctx.metrics.push_reports.labels("smsgo", "report", outcome).inc()
        # smsgo repeats a report (3 times) until it reads exactly this acknowledgement, also
        # for a message id goipd does not know (yet: a held report is matched again here).
        return web.Response(
            text=smsgo.report_ack(status.upstream_id), content_type="text/plain", charset="utf-8"
        )

    async def smsgo_reply(self, request: web.Request) -> web.Response:
        query = self._authorize(request, "smsgo", "inbound")
        sms = self._parsed("smsgo", "inbound", "smsgo reply", smsgo.parse_reply, query)
        inbound_id = await store_inbound(self.ctx, "smsgo", sms)
        self.ctx.metrics.push_reports.labels("smsgo", "inbound", "ok").inc()
        return json_reply({"status": "ok", "id": inbound_id})

    async def paasoo_report(self, request: web.Request) -> web.Response:
        query = self._authorize(request, "paasoo", "report")
        status = self._parsed(
            "paasoo", "report", "PaaSoo delivery report", paasoo.parse_report, query
        )
        outcome = await self.held.apply("paasoo", status)
        self.ctx.metrics.push_reports.labels("paasoo", "report", outcome).inc()
        return json_reply({"status": outcome})

    def add_routes(self, app: web.Application) -> None:
        for path, handler in (
            ("/hooks/smsgo/report", self.smsgo_report),
            ("/hooks/smsgo/reply", self.smsgo_reply),
            ("/hooks/paasoo/report", self.paasoo_report),
        ):
            app.router.add_get(path, handler)
            app.router.add_get(path + "/{token}", handler)
