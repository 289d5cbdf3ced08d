"""Push endpoints the SMS Servers call: send results and inbound SMS.

Push reports are untrusted input: the URL must carry the server's hook token (and come from its
allowlist when one is set), bodies are small and bounded, and every report is applied through
the same idempotent path as a queried one (goipd/reports/goip.py).
"""

from __future__ import annotations

import hmac
import ipaddress

import structlog
from aiohttp import web

from goipd.config import GOIP_INBOUND_HOOK, GOIP_STATUS_HOOK, Server
from goipd.inbound.store import store_goip_inbound
from goipd.model import GoipInbound
from goipd.problem import Problem
from goipd.reports.goip import GoipContext, apply_goip_report
from goipd.upstream.errors import ParseError
from goipd.upstream.goip import parse_inbound_push, parse_status_push
from goipd.upstream.http import read_capped
from goipd.web.replies import json_reply

log = structlog.get_logger("goipd.web.goip_hooks")


MAX_HOOK_BODY = 64 * 1024


HOOKS_KEY = web.AppKey("hooks", GoipContext)


def _authorize(request: web.Request, ctx: GoipContext, kind: str) -> Server:
    name = request.match_info["server"]
    server = ctx.servers().get(name)
    presented = request.query.get("token", "").encode()
    expected = (
        server.hook_token.get_secret_value().encode()
        if server is not None and server.hook_token is not None
        else None
    )
    # An unknown server and a wrong token look the same from outside.
    ok = expected is not None and hmac.compare_digest(presented, expected)
    if ok and server is not None and server.hook_allow:
        peer = request.remote or ""
        try:
            address = ipaddress.ip_address(peer)
            ok = any(address in network for network in server.hook_allow)
        except ValueError:
            ok = False
    if not ok or server is None:
        source = name if server is not None else "unknown"
        ctx.metrics.push_reports.labels(source, kind, "unauthorized").inc()
        log.warning("push_rejected", server=source, kind=kind, peer=request.remote)
        raise Problem(401, "wrong or missing hook token, or address not allowed")
    return server


async def _body(request: web.Request, ctx: GoipContext, server: str, kind: str) -> bytes:
    if request.content_length is not None and request.content_length > MAX_HOOK_BODY:
        ctx.metrics.push_reports.labels(server, kind, "malformed").inc()
        raise Problem(413, f"push body larger than {MAX_HOOK_BODY} bytes")
    body = await read_capped(request.content, MAX_HOOK_BODY)
    if body is None:
        ctx.metrics.push_reports.labels(server, kind, "malformed").inc()
        raise Problem(413, f"push body larger than {MAX_HOOK_BODY} bytes")
    return body


async def goip_status(request: web.Request) -> web.Response:
    ctx = request.app[HOOKS_KEY]
    server = _authorize(request, ctx, "status")
    body = await _body(request, ctx, server.name, "status")
    try:
        report = parse_status_push(body)
    except ParseError as exc:
        ctx.metrics.push_reports.labels(server.name, "status", "malformed").inc()
        raise Problem(400, f"malformed send report: {exc}") from None
    outcome = await apply_goip_report(ctx, server.name, report)
    ctx.children.get(ctx.metrics.push_reports, server.name, "status", outcome).inc()
    return json_reply({"status": outcome})


async def goip_inbound(request: web.Request) -> web.Response:
    ctx = request.app[HOOKS_KEY]
    server = _authorize(request, ctx, "inbound")
    body = await _body(request, ctx, server.name, "inbound")
    try:
        sms = parse_inbound_push(body)
    except ParseError as exc:
        ctx.metrics.push_reports.labels(server.name, "inbound", "malformed").inc()
        raise Problem(400, f"malformed inbound SMS: {exc}") from None
    # Stored durably before the 200: the SMS Server does not push an SMS twice. A line the
    # server no longer knows (renamed, deleted) is null in the push: stored all the same.
    inbound_id, new = await store_goip_inbound(
        ctx,
        GoipInbound(server.name, sms.goip_line, sms.from_number, sms.content, sms.recv_time_raw),
    )
    ctx.metrics.push_reports.labels(server.name, "inbound", "ok").inc()
    return json_reply({"status": "ok" if new else "duplicate", "id": inbound_id})


def add_routes(app: web.Application) -> None:
    # The same paths goipd tells operators to paste into the SMS Servers (Server.push_urls).
    app.router.add_post(GOIP_STATUS_HOOK, goip_status)
    app.router.add_post(GOIP_INBOUND_HOOK, goip_inbound)
