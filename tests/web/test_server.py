"""The gate every /api/ request passes: not while stopping, then each check in order; hooks
and probes pass untouched."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from goipd.problem import Problem
from goipd.web.server import _api_gate


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="handled")


def _refuse(status: int) -> Callable[[web.Request], None]:
    def check(request: web.Request) -> None:
        raise Problem(status, f"refused with {status}")

    return check


async def test_api_requests_are_refused_while_stopping_and_hooks_still_pass() -> None:
    stopping = [True]
    gate = _api_gate(lambda: stopping[0], [])
    refused = await gate(make_mocked_request("POST", "/api/v1/messages"), _ok)
    assert refused.status == 503
    assert json.loads(refused.text)["detail"] == "goipd is shutting down"
    assert refused.headers["Retry-After"] == "5"
    hook = await gate(make_mocked_request("POST", "/hooks/goip/s1/status"), _ok)
    assert hook.status == 200
    stopping[0] = False
    assert (await gate(make_mocked_request("POST", "/api/v1/messages"), _ok)).status == 200


async def test_checks_run_in_order_on_api_requests_only() -> None:
    gate = _api_gate(lambda: False, [_refuse(401), _refuse(429)])
    with pytest.raises(Problem) as first:
        await gate(make_mocked_request("GET", "/api/v1/lines"), _ok)
    assert first.value.status == 401
    assert (await gate(make_mocked_request("GET", "/healthz"), _ok)).status == 200
