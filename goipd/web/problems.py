"""RFC 9457 problem documents, and the middleware that turns every error into one."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web

from goipd.model import LedgerError
from goipd.problem import Problem

log = structlog.get_logger("goipd.http")
PROBLEM_TYPE = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            instance=_public_path(request),
            headers=exc.headers,
            **exc.extra,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        path = _public_path(request)
        detail = {
            404: f"no resource at {path}",
            405: f"method {request.method} is not allowed on {path}",
            413: "request body is too large",
        }.get(exc.status, exc.reason)
        return problem_response(
            exc.status,
            detail,
            instance=path,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except LedgerError as exc:
        # A hook or read that met a ledger it cannot use: the sender should retry later, and
        # the store's condition is no stack trace.
        return problem_response(
            503,
            f"the ledger cannot take this right now: {exc}",
            instance=_public_path(request),
            headers={"Retry-After": "5"},
        )
    except Exception:
        path = _public_path(request)
        log.exception("request_failed", method=request.method, path=path)
        return problem_response(500, "internal error; the event is in goipd's log", instance=path)


def _public_path(request: web.Request) -> str:
    """The request path fit to echo: a hook token carried as a path segment is masked."""
    token = request.match_info.get("token") if request.match_info else None
    return request.path.replace(token, "***") if token else request.path
