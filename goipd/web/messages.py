"""/api/v1/messages: send, look up, list and cancel messages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from goipd.accept.acceptor import accept_message, check_replay
from goipd.accept.validate import parse_time, validate_message
from goipd.config import format_duration
from goipd.model import PUBLIC_STATES, LedgerError, Message, Recipient, State
from goipd.problem import Problem
from goipd.web.auth import client_id
from goipd.web.body import json_body, query_limit
from goipd.web.context import API_KEY
from goipd.web.replies import json_reply


def recipient_json(r: Recipient) -> dict[str, Any]:
    state = State.SUBMITTED if r.state is State.DISPATCHING else r.state
    return {
        "to": r.number,
        "state": state.value,
        "attempts": r.attempts,
        "route": r.route,
        "server": r.server,
        "line": r.line,
        "task_id": r.task_id,
        "upstream_id": r.upstream_id,
        "error": {"code": r.error_code, "meaning": r.error_meaning} if r.error_code else None,
        "created_at": iso_time(r.created_at),
        "updated_at": iso_time(r.updated_at),
        "submitted_at": iso_time(r.submitted_at),
        "sent_at": iso_time(r.sent_at),
        "delivered_at": iso_time(r.delivered_at),
    }


def message_json(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "created_at": iso_time(m.created_at),
        "text": m.text,
        "segments": m.segments,
        "encoding": m.encoding,
        "route": json.loads(m.route) if m.route else None,
        "send_at": iso_time(m.send_at),
        "idempotency_key": m.idempotency_key,
        "priority": m.priority,
        "expires_at": iso_time(m.expires_at),
        "status_url": shown_url(m.status_url),
        "status_events": m.status_events.split(",") if m.status_events else None,
        "recipients": [recipient_json(r) for r in m.recipients],
    }


def shown_url(url: str | None) -> str | None:
    """`url` without its query: callers put their own secrets there, and any API token may
    read any message."""
    if url is None or "?" not in url:
        return url
    return url.split("?", 1)[0] + "?..."


LAST_ISO: list[Any] = [None, None]
"""The last time formatted and its text: a new message's times are all the same instant."""


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    if ts != LAST_ISO[0]:
        text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
        LAST_ISO[:] = [ts, text.replace("+00:00", "Z")]
    text_now: str = LAST_ISO[1]
    return text_now


async def post_message(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    now = ctx.clock()
    window = ctx.settings().duplicate_window
    new = validate_message(
        await json_body(request),
        ctx,
        now,
        client=client_id(request),
        # Checked by the ledger inside the transaction that stores the message: no read per
        # number before it, and two identical requests in flight cannot both pass.
        duplicate_since=now - window if window > 0 else None,
    )
    result = await accept_message(ctx, new, now)
    if result.duplicate_number is not None:
        raise Problem(
            409,
            f"the same text went to {result.duplicate_number} less than "
            f"{format_duration(window)} ago (message {result.message.id}); the flood guard "
            "refuses repeats (api.duplicate_window)",
            title="Duplicate message",
            duplicate_of=result.message.id,
        )
    if not result.created:
        check_replay(result.message, new, now)
        return json_reply(
            message_json(result.message), status=200, headers={"Idempotent-Replayed": "true"}
        )
    return json_reply(
        message_json(result.message),
        status=202,
        headers={"Location": f"/api/v1/messages/{result.message.id}"},
    )


def _message_id(request: web.Request) -> str:
    message_id = request.match_info["id"]
    if not re.fullmatch(r"[0-9A-Za-z]{1,40}", message_id):
        raise Problem(404, "no message with that id")
    return message_id


async def get_message(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    message = await ctx.ledger.get_message(_message_id(request))
    if message is None:
        raise Problem(404, "no message with that id")
    return json_reply(message_json(message))


async def list_messages(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    state_raw = request.query.get("state")
    state = None
    if state_raw is not None:
        if state_raw not in PUBLIC_STATES:
            raise Problem(400, f"state: expected one of {', '.join(PUBLIC_STATES)}")
        state = State(state_raw)
    since = None
    if "since" in request.query:
        since = parse_time(request.query["since"], "since")
    after = request.query.get("after")
    if after is not None and not re.fullmatch(r"[0-9A-Za-z]{1,40}", after):
        raise Problem(400, "after: not a message id")
    limit = query_limit(request)
    messages = await ctx.ledger.list_messages(state, since, limit, after)
    return json_reply(
        {
            "messages": [message_json(m) for m in messages],
            "next": messages[-1].id if len(messages) == limit else None,
        }
    )


async def delete_message(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    message_id = _message_id(request)
    before = await ctx.ledger.get_message(message_id)
    if before is None:
        raise Problem(404, "no message with that id")
    now = ctx.clock()
    # A scheduled send a provider holds (providers.*.schedule_ahead) is still cancellable there.
    handed_over = [
        r
        for r in before.recipients
        if r.state is State.SUBMITTED
        and r.server is None
        and r.upstream_id
        and before.send_at is not None
        and before.send_at > now
    ]
    if not handed_over and not any(r.state is State.QUEUED for r in before.recipients):
        raise Problem(409, "nothing to cancel: every recipient is already submitted or final")
    cancelled = await ctx.cancel_handed_over(handed_over) if handed_over else []
    if not cancelled and not any(r.state is State.QUEUED for r in before.recipients):
        raise Problem(
            409, "nothing cancelled: the provider holding the scheduled send could not cancel it"
        )
    try:
        after = await ctx.ledger.cancel(message_id, now, cancelled)
    except LedgerError as exc:
        raise Problem(503, f"the ledger cannot store changes right now: {exc}") from None
    assert after is not None
    return json_reply(message_json(after))
