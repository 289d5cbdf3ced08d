"""/api/v1/alertmanager: Alertmanager's webhook, one SMS per notification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from goipd.accept import alerts as alerting
from goipd.accept.acceptor import accept_message
from goipd.accept.validate import validate_message
from goipd.config import RouteTarget
from goipd.problem import Problem
from goipd.web.auth import client_id
from goipd.web.body import json_body
from goipd.web.context import ALERTING_KEY, API_KEY
from goipd.web.replies import json_reply


async def post_alertmanager(request: web.Request) -> web.Response:
    """Alertmanager's webhook: one SMS per notification to the receiver's numbers. The API's
    flood guard (api.duplicate_window) does not apply: alerting.dedup_window does that job."""
    ctx = request.app[API_KEY]
    relay = request.app[ALERTING_KEY]
    try:
        notification = alerting.parse_notification(await json_body(request))
    except alerting.NotificationError as exc:
        relay.count("malformed")
        raise Problem(400, str(exc)) from None
    except Problem:
        relay.count("malformed")
        raise
    receiver = relay.receiver(notification.receiver)
    if receiver is None:
        relay.unknown_receiver(notification.receiver)
        raise Problem(
            404,
            f"no receiver named {notification.receiver[:64]!r} under alerting.receivers",
        )
    text = alerting.render(notification, receiver.max_segments, ctx.settings().max_text_chars)
    client = client_id(request)

    async def submit(numbers: Sequence[str], text: str, route: RouteTarget | None) -> str:
        now = ctx.clock()
        body: dict[str, Any] = {"to": list(numbers), "text": text}
        if route is not None:
            body["route"] = route.model_dump(exclude_none=True)
        new = validate_message(body, ctx, now, client=client)
        return (await accept_message(ctx, new, now)).message.id

    # Wall-clock time: the ledger compares pages stamped by other processes and instances.
    return json_reply(await relay.deliver(notification, receiver, text, ctx.clock(), submit))
