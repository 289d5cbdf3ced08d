"""The aiohttp application: its middlewares in order, the shared state handlers read, and every
route of goipd's HTTP listener."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from goipd.accept.alerts import AlertRelay
from goipd.config import Settings
from goipd.fleet.actions import LineActions
from goipd.fleet.balances import BalanceChecker
from goipd.fleet.quarantine import QUARANTINE_KEY, ManualQuarantines
from goipd.fleet.registry import LineRegistry
from goipd.reports.cloud import CloudContext, HeldReports
from goipd.reports.goip import GoipContext
from goipd.web import goip_hooks, probes, routes, statuspage
from goipd.web.auth import client_id, token_check
from goipd.web.cloud_hooks import CloudHooks
from goipd.web.context import ALERTING_KEY, API_KEY, REGISTRY_KEY, ApiContext
from goipd.web.lines import ACTIONS_KEY, BALANCES_KEY
from goipd.web.problems import Handler, problem_middleware, problem_response
from goipd.web.ratelimit import RateLimit, rate_check


@dataclass
class Parts:
    """What the handlers work with, built by the daemon."""

    probed: probes.Probed
    registry: LineRegistry
    api: ApiContext
    alert_relay: AlertRelay
    goip: GoipContext
    quarantines: ManualQuarantines
    cloud: CloudContext
    held_reports: HeldReports
    provider_hook_tokens: Callable[[], Mapping[str, SecretStr | None]]
    actions: LineActions
    balances: BalanceChecker


def build_app(
    settings: Callable[[], Settings], stopping: Callable[[], bool], parts: Parts
) -> web.Application:
    """`settings` is read per request, so a reload takes effect without a new application."""
    app = web.Application(
        middlewares=[
            problem_middleware,
            _api_gate(
                stopping,
                [
                    token_check(lambda: settings().api_tokens),
                    rate_check(
                        lambda: _rate_limit(
                            settings().api.rate_limit, settings().api.rate_limit_burst
                        ),
                        # Without tokens any Authorization header passes: keying buckets by it
                        # would let a client skip the limit with a new header per request.
                        lambda request: client_id(request) if settings().api_tokens else "",
                    ),
                ],
            ),
        ],
        client_max_size=settings().http.max_body_bytes,
    )
    app[probes.PROBED_KEY] = parts.probed
    app[REGISTRY_KEY] = parts.registry
    app[API_KEY] = parts.api
    app[ALERTING_KEY] = parts.alert_relay
    app[goip_hooks.HOOKS_KEY] = parts.goip
    app[QUARANTINE_KEY] = parts.quarantines
    app[ACTIONS_KEY] = parts.actions
    app[BALANCES_KEY] = parts.balances
    probes.add_routes(app)
    routes.add_routes(app)
    statuspage.add_routes(app)
    goip_hooks.add_routes(app)
    CloudHooks(parts.cloud, parts.provider_hook_tokens, parts.held_reports).add_routes(app)
    return app


@functools.lru_cache(maxsize=8)
def _rate_limit(per_second: float, burst: int) -> RateLimit:
    # One object per setting, not per request: the limit is read on every API call.
    return RateLimit(per_second, burst)


def _api_gate(stopping: Callable[[], bool], checks: Sequence[Callable[[web.Request], None]]) -> Any:
    """What every /api/ request passes before its handler, in order: goipd not stopping, then
    `checks` (the token, then the rate limit), each raising its refusal. One middleware rather
    than one per check: each layer costs every request, hooks included, a coroutine."""

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            if stopping():
                # During a graceful stop new work is refused (clients retry elsewhere or
                # later), while hooks keep being applied: they finish sends already out.
                return problem_response(
                    503,
                    "goipd is shutting down",
                    title="Shutting down",
                    headers={"Retry-After": "5"},
                )
            for check in checks:
                check(request)
        return await handler(request)

    return gate
