"""The public HTTP API under /api/v1 (bearer-token protected)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from goipd.fleet.registry import Line, LineRegistry, LineState, ServerState
from goipd.problems import Handler, Problem

REGISTRY_KEY = web.AppKey("line_registry", LineRegistry)


def token_middleware(tokens: Sequence[SecretStr]) -> Any:
    encoded = [t.get_secret_value().encode() for t in tokens]

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or not encoded:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        candidate = presented.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every token, always: timing must not reveal which one nearly matched.
        matched = False
        for token in encoded:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            detail = "missing bearer token" if not header else "invalid bearer token"
            raise Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="goipd"'})
        return await handler(request)

    return check_token


def line_json(line: Line, now: float) -> dict[str, Any]:
    return {
        "server": line.server,
        "line": line.line_id,
        "state": line.state.value,
        "online": line.online,
        "registered": line.registered,
        "reg": line.reg_raw,
        "remain_sms": line.remain_sms,
        "day_remain_sms": line.day_remain_sms,
        "healthy": line.healthy,
        "quarantined_until": line.quarantined_until if line.quarantined(now) else None,
        "quarantine_reason": line.quarantine_reason if line.quarantined(now) else None,
        "first_seen": line.first_seen,
        "last_change": line.last_change,
        "last_seen": line.last_seen,
    }


def server_json(server: ServerState) -> dict[str, Any]:
    return {
        "server": server.name,
        "up": server.up,
        "polled": server.polled,
        "last_poll": server.last_poll,
        "last_success": server.last_success,
        "last_error": server.last_error,
        "last_error_reason": server.last_error_reason.value if server.last_error_reason else None,
        "consecutive_failures": server.consecutive_failures,
        "lines": sum(1 for line in server.lines.values() if not line.gone),
    }


async def get_lines(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    server_filter = request.query.get("server")
    state_filter = request.query.get("state")
    healthy_filter = request.query.get("healthy")
    if server_filter is not None and server_filter not in registry.servers:
        raise Problem(404, f"no server named {server_filter[:40]!r}")
    if state_filter is not None and state_filter not in set(LineState):
        raise Problem(400, f"state must be one of {', '.join(LineState)}")
    if healthy_filter not in (None, "true", "false"):
        raise Problem(400, "healthy must be true or false")
    now = time.time()
    servers = [
        s for s in registry.servers.values() if server_filter is None or s.name == server_filter
    ]
    lines = [
        line_json(line, now)
        for server in servers
        for line in server.lines.values()
        if (state_filter is None or line.state == state_filter)
        and (healthy_filter is None or line.healthy == (healthy_filter == "true"))
    ]
    return web.json_response({"servers": [server_json(s) for s in servers], "lines": lines})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/lines", get_lines)
