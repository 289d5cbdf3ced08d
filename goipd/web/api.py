"""The public HTTP API under /api/v1 (bearer-token protected)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from aiohttp import web
from pydantic import SecretStr, ValidationError

from goipd.accept import alerts as alerting
from goipd.accept import segments
from goipd.config import ApiSettings, RouteTarget, format_duration
from goipd.fleet.quarantine import QUARANTINE_KEY
from goipd.fleet.registry import Line, LineRegistry, LineState, ManualQuarantine, ServerState
from goipd.ledger.base import (
    AcceptResult,
    Ledger,
    LedgerError,
    Message,
    NewMessage,
    Recipient,
    State,
)
from goipd.metrics.catalog import Metrics
from goipd.upstream import cms
from goipd.web import openapi, overview
from goipd.web.problems import Handler, Problem, json_kind

REGISTRY_KEY = web.AppKey("line_registry", LineRegistry)


def token_middleware(tokens: Callable[[], Sequence[SecretStr]]) -> Any:
    """Bearer-token check on /api/*; `tokens` is read per request so a reload takes effect."""
    # The encoded tokens of the last token tuple seen: a reload brings a new tuple.
    cache: list[Any] = [None, ()]

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        current = tokens()
        if current is not cache[0]:
            cache[:] = [current, tuple(t.get_secret_value().encode() for t in current)]
        encoded: tuple[bytes, ...] = cache[1]
        if not encoded:
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
        "quarantined": line.quarantined(now),
        "quarantined_until": line.quarantined_until if line.auto_quarantined(now) else None,
        "quarantine_reason": line.quarantine_reason if line.auto_quarantined(now) else None,
        "manual_quarantine": manual_json(line.manual_quarantine),
        "last_error": (
            {
                "code": line.last_error_code,
                "meaning": cms.meaning(line.last_error_code),
                "at": line.last_error_at,
            }
            if line.last_error_at is not None
            else None
        ),
        "first_seen": line.first_seen,
        "last_change": line.last_change,
        "last_seen": line.last_seen,
    }


def manual_json(quarantine: ManualQuarantine | None) -> dict[str, Any] | None:
    if quarantine is None:
        return None
    return {"reason": quarantine.reason, "since": quarantine.since}


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


async def get_status(request: web.Request) -> web.Response:
    """The status page's overview: servers with line counts, queue depth, provider balances
    and every stored manual quarantine (also those of lines not reported now)."""
    registry = request.app[REGISTRY_KEY]
    metrics = request.app[API_KEY].metrics
    now = time.time()
    quarantines = [
        {
            "server": server,
            "line": line_id,
            "reported": _reported(registry, server, line_id),
            "reason": quarantine.reason,
            "since": quarantine.since,
        }
        for (server, line_id), quarantine in sorted(registry.manual.items())
    ]
    return web.json_response(
        {
            "time": now,
            "servers": [
                {**server_json(s), "counts": overview.server_counts(registry, s.name, now)}
                for s in registry.servers.values()
            ],
            "queue": overview.queue(metrics),
            "providers": overview.providers(metrics),
            "manual_quarantines": quarantines,
        }
    )


# --- manual quarantine -------------------------------------------------------------------------

# For lines the server does not report now: what a GoIP line id can look like ("G101", "1.01").
_LINE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.:-]{0,31}")
_QUARANTINE_FIELDS = frozenset({"reason"})


def _quarantine_target(request: web.Request) -> tuple[str, str]:
    registry = request.app[REGISTRY_KEY]
    server, line_id = request.match_info["server"], request.match_info["line"]
    state = registry.servers.get(server)
    if state is None:
        raise Problem(404, f"no server named {server[:40]!r}")
    line = state.lines.get(line_id)
    if line is None and not _LINE_ID.fullmatch(line_id):
        raise Problem(
            404,
            f"server {server} reports no line {line_id[:40]!r}, and that is not a line id "
            "(letters, digits and _.:- , at most 32 characters)",
        )
    return server, line_id


def _reported(registry: LineRegistry, server: str, line_id: str) -> bool:
    """The server lists this line in its latest poll."""
    line = registry.line(server, line_id)
    return line is not None and not line.gone


def _quarantine_json(
    registry: LineRegistry, server: str, line_id: str, now: float
) -> dict[str, Any]:
    line = registry.line(server, line_id)
    manual = registry.manual.get((server, line_id))
    return {
        "server": server,
        "line": line_id,
        "reported": _reported(registry, server, line_id),
        "quarantined": manual is not None or (line is not None and line.quarantined(now)),
        "manual_quarantine": manual_json(manual),
    }


async def put_quarantine(request: web.Request) -> web.Response:
    """Take a line out of routing until an operator releases it. A line the server does not
    report right now may be named too: the quarantine applies as soon as it appears."""
    server, line_id = _quarantine_target(request)
    body: Any = await _json_body(request) if await request.read() else {}
    if not isinstance(body, dict):
        raise Problem(400, f"expected a JSON object, got {json_kind(body)}")
    unknown = sorted(set(body) - _QUARANTINE_FIELDS)
    if unknown:
        raise Problem(422, f"unknown field {unknown[0][:40]!r}; allowed: reason")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Problem(422, f"reason: expected a string, got {json_kind(reason)}")
    if reason is not None and (len(reason) > 200 or _CONTROL.search(reason)):
        raise Problem(422, "reason: at most 200 characters, no control characters")
    now = request.app[API_KEY].clock()
    try:
        await request.app[QUARANTINE_KEY].quarantine(
            server, line_id, reason or None, now, _client_id(request)
        )
    except LedgerError as exc:
        raise Problem(503, f"the ledger cannot store the quarantine right now: {exc}") from None
    return web.json_response(_quarantine_json(request.app[REGISTRY_KEY], server, line_id, now))


async def delete_quarantine(request: web.Request) -> web.Response:
    """Release a line: its manual quarantine and any quarantine after line errors."""
    server, line_id = _quarantine_target(request)
    now = request.app[API_KEY].clock()
    try:
        released = await request.app[QUARANTINE_KEY].release(
            server, line_id, now, _client_id(request)
        )
    except LedgerError as exc:
        raise Problem(503, f"the ledger cannot store the release right now: {exc}") from None
    if not released.manual and not released.auto:
        raise Problem(404, f"line {line_id} of server {server} is not quarantined")
    reply = _quarantine_json(request.app[REGISTRY_KEY], server, line_id, now)
    reply["released"] = [
        kind for kind, done in (("manual", released.manual), ("errors", released.auto)) if done
    ]
    return web.json_response(reply)


# --- messages -----------------------------------------------------------------------------------


@dataclass
class ApiContext:
    ledger: Ledger
    settings: Callable[[], ApiSettings]
    server_names: Callable[[], Collection[str]]
    cloud_names: Callable[[], Collection[str]]
    metrics: Metrics
    wake_dispatch: Callable[[], None]
    clock: Callable[[], float]
    cancel_handed_over: Callable[[Sequence[Recipient]], Awaitable[list[int]]] = field(
        default=lambda _recipients: _nothing_cancelled()
    )
    """Asks the providers holding scheduled sends to cancel them; returns the recipient ids
    they confirmed cancelled."""


async def _nothing_cancelled() -> list[int]:
    return []


API_KEY = web.AppKey("api", ApiContext)
ALERTING_KEY = web.AppKey("alerting", alerting.AlertRelay)
_MESSAGE_FIELDS = frozenset({"to", "text", "route", "idempotency_key", "send_at"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_SCHEDULE_AHEAD = 30 * 86400.0


def _client_id(request: web.Request) -> str:
    """A short fingerprint of the caller's token: enough to tell clients apart, useless to an
    attacker (the token itself is never stored)."""
    header = request.headers.get("Authorization", "")
    return _fingerprint(header.partition(" ")[2].strip())


client_id = _client_id
"""Public name for other middlewares (the rate limit keys its buckets by it)."""


@functools.lru_cache(maxsize=256)
def _fingerprint(token: str) -> str:
    # Cached: clients are few and a SHA-256 per request was 1.6% of an accept.
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise Problem(400, "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(
            400,
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise Problem(400, "request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        _refuse_lone_surrogates(body, "request body")
    return body


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
"""JSON's only way to a lone UTF-16 surrogate: a \\uD800-\\uDFFF escape (a valid pair of them
decodes to one character)."""


def _refuse_lone_surrogates(value: Any, where: str) -> None:
    """A string no UTF-8 store or SMS can carry is the client's error (422), not a 500 when the
    ledger tries to write it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Problem(
                422, f"{where}: holds a lone UTF-16 surrogate at character {exc.start}"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key, where)
            name = str(key)[:40]
            _refuse_lone_surrogates(item, f"{where}.{name}" if where != "request body" else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{where}[{index}]")


def normalise_number(raw: object, region: str, where: str) -> str:
    if not isinstance(raw, str):
        raise Problem(422, f"{where}: expected a phone number as a string, got {json_kind(raw)}")
    if len(raw) > 32:
        raise Problem(422, f"{where}: a phone number has at most 32 characters")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise Problem(422, f"{where}: {raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise Problem(422, f"{where}: {raw!r} is not a valid number (default region {region})")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _parse_route(value: object, ctx: ApiContext) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Problem(422, f"route: expected an object, got {json_kind(value)}")
    try:
        target = RouteTarget.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first.get("ctx", {}).get("error", first["msg"]))
        raise Problem(422, f"route{'.' + where if where else ''}: {message}") from None
    if (
        target.server is not None
        and target.server != "*"
        and (target.server not in ctx.server_names())
    ):
        raise Problem(422, f"route.server: no server named {target.server[:32]!r}")
    if target.cloud is not None and target.cloud not in ctx.cloud_names():
        raise Problem(422, f"route.cloud: provider {target.cloud!r} is not configured")
    return json.dumps(target.model_dump(exclude_none=True), ensure_ascii=False)


def _parse_time(value: object, field: str) -> float:
    if not isinstance(value, str):
        raise Problem(422, f"{field}: expected an RFC 3339 time string, got {json_kind(value)}")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            422, f"{field}: expected an RFC 3339 time like 2026-01-31T09:00:00+08:00"
        ) from None
    if when.tzinfo is None:
        raise Problem(422, f"{field}: the time needs a UTC offset (e.g. +08:00 or Z)")
    return when.timestamp()


def _parse_send_at(value: object, now: float) -> float | None:
    if value is None:
        return None
    at = _parse_time(value, "send_at")
    if at > now + MAX_SCHEDULE_AHEAD:
        raise Problem(422, "send_at: at most 30 days ahead")
    return at if at > now else None


def validate_message(
    body: Any,
    ctx: ApiContext,
    now: float,
    *,
    client: str = "",
    duplicate_since: float | None = None,
) -> NewMessage:
    """The message `body` asks for, from the API token `client`, checked by the flood guard
    back to `duplicate_since` (None: not checked)."""
    settings = ctx.settings()
    if not isinstance(body, dict):
        raise Problem(400, f"expected a JSON object, got {json_kind(body)}")
    unknown = sorted(set(body) - _MESSAGE_FIELDS)
    if unknown:
        raise Problem(
            422,
            f"unknown field {unknown[0][:40]!r}; allowed: " + ", ".join(sorted(_MESSAGE_FIELDS)),
        )
    to = body.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        raise Problem(422, "to: expected a phone number or a non-empty array of them")
    if len(to) > settings.max_recipients:
        raise Problem(
            422, f"to: at most {settings.max_recipients} recipients per message, got {len(to)}"
        )
    numbers = list(
        dict.fromkeys(
            normalise_number(raw, settings.default_region, f"to[{index}]")
            for index, raw in enumerate(to)
        )
    )
    text = body.get("text")
    if not isinstance(text, str):
        raise Problem(422, f"text: expected a string, got {json_kind(text)}")
    if not text.strip():
        raise Problem(422, "text: must not be empty")
    if len(text) > settings.max_text_chars:
        raise Problem(422, f"text: at most {settings.max_text_chars} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise Problem(422, "text: control characters are not allowed (newline and tab are)")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        raise Problem(422, "idempotency_key: expected a string of 1 to 128 characters")
    info = segments.analyse(text)
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=info.segments,
        encoding=info.encoding,
        route=_parse_route(body.get("route"), ctx),
        idempotency_key=key,
        send_at=_parse_send_at(body.get("send_at"), now),
        client=client,
        duplicate_since=duplicate_since,
    )


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
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
        "submitted_at": _iso(r.submitted_at),
        "sent_at": _iso(r.sent_at),
        "delivered_at": _iso(r.delivered_at),
    }


def message_json(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "created_at": _iso(m.created_at),
        "text": m.text,
        "segments": m.segments,
        "encoding": m.encoding,
        "route": json.loads(m.route) if m.route else None,
        "send_at": _iso(m.send_at),
        "idempotency_key": m.idempotency_key,
        "recipients": [recipient_json(r) for r in m.recipients],
    }


_LAST_ISO: list[Any] = [None, None]
"""The last time formatted and its text: a new message's times are all the same instant."""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    if ts != _LAST_ISO[0]:
        text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
        _LAST_ISO[:] = [ts, text.replace("+00:00", "Z")]
    text_now: str = _LAST_ISO[1]
    return text_now


async def post_message(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    now = ctx.clock()
    window = ctx.settings().duplicate_window
    new = validate_message(
        await _json_body(request),
        ctx,
        now,
        client=_client_id(request),
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
        _check_replay(result.message, new, now)
        return web.json_response(
            message_json(result.message), status=200, headers={"Idempotent-Replayed": "true"}
        )
    return web.json_response(
        message_json(result.message),
        status=202,
        headers={"Location": f"/api/v1/messages/{result.message.id}"},
    )


def _check_replay(stored: Message, new: NewMessage, now: float) -> None:
    """A repeated idempotency key must come with the same request: anything else is a client
    bug that would silently drop the new message, so it is refused (as the IETF
    Idempotency-Key draft does). Another API token's message is never shown."""
    if stored.client != new.client:
        raise Problem(
            422,
            "idempotency_key: already used by another API token; use a new key",
            title="Idempotency key reused",
        )
    same = (
        stored.text == new.text
        and sorted(r.number for r in stored.recipients) == sorted(new.recipients)
        and stored.route == new.route
        # A retry after the scheduled time has passed reads send_at as "now" (None).
        and (
            stored.send_at == new.send_at
            or (new.send_at is None and stored.send_at is not None and stored.send_at <= now)
        )
    )
    if not same:
        raise Problem(
            422,
            f"idempotency_key: already used for message {stored.id} with a different to, text, "
            "route or send_at; use a new key for a new message",
            title="Idempotency key reused",
            original=stored.id,
        )


async def accept_message(ctx: ApiContext, new: NewMessage, now: float) -> AcceptResult:
    """The one way into the ledger for every endpoint that takes messages: stored durably,
    counted, dispatch woken."""
    try:
        result = await ctx.ledger.accept(new, now)
    except LedgerError as exc:
        raise Problem(
            503, f"the ledger cannot store messages right now: {exc}", headers={"Retry-After": "5"}
        ) from None
    if result.created:
        ctx.metrics.messages_accepted.inc(len(new.recipients))
        ctx.wake_dispatch()
    return result


async def post_alertmanager(request: web.Request) -> web.Response:
    """Alertmanager's webhook: one SMS per notification to the receiver's numbers. The API's
    flood guard (api.duplicate_window) does not apply: alerting.dedup_window does that job."""
    ctx = request.app[API_KEY]
    relay = request.app[ALERTING_KEY]
    try:
        notification = alerting.parse_notification(await _json_body(request))
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
    client = _client_id(request)

    async def submit(numbers: Sequence[str], text: str, route: RouteTarget | None) -> str:
        now = ctx.clock()
        body: dict[str, Any] = {"to": list(numbers), "text": text}
        if route is not None:
            body["route"] = route.model_dump(exclude_none=True)
        new = validate_message(body, ctx, now, client=client)
        return (await accept_message(ctx, new, now)).message.id

    return web.json_response(
        await relay.deliver(notification, receiver, text, time.monotonic(), submit)
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
    return web.json_response(message_json(message))


def _limit(request: web.Request, default: int = 100, maximum: int = 1000) -> int:
    raw = request.query.get("limit", str(default))
    # isdigit() would accept "²"; only ASCII digits, and few of them, reach int().
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= maximum:
        raise Problem(400, f"limit: expected an integer from 1 to {maximum}")
    return int(raw)


async def list_messages(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    state_raw = request.query.get("state")
    state = None
    if state_raw is not None:
        public = [s.value for s in State if s is not State.DISPATCHING]
        if state_raw not in public:
            raise Problem(400, f"state: expected one of {', '.join(public)}")
        state = State(state_raw)
    since = None
    if "since" in request.query:
        since = _parse_time(request.query["since"], "since")
    after = request.query.get("after")
    if after is not None and not re.fullmatch(r"[0-9A-Za-z]{1,40}", after):
        raise Problem(400, "after: not a message id")
    limit = _limit(request)
    messages = await ctx.ledger.list_messages(state, since, limit, after)
    return web.json_response(
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
    return web.json_response(message_json(after))


async def list_inbound(request: web.Request) -> web.Response:
    ctx = request.app[API_KEY]
    limit = _limit(request)
    before_raw = request.query.get("before")
    if before_raw is not None and not re.fullmatch(r"[0-9]{1,18}", before_raw):
        raise Problem(400, "before: expected an inbound id")
    records = await ctx.ledger.list_inbound(limit, int(before_raw) if before_raw else None)
    return web.json_response(
        {
            "inbound": [
                {
                    "id": r.id,
                    "source": r.source,
                    "line": r.line,
                    "from": r.from_number,
                    "to": r.to_number,
                    "text": r.content,
                    "received_at": _iso(r.received_at),
                    "upstream_time": r.upstream_time,
                }
                for r in records
            ],
            "next": str(records[-1].id) if len(records) == limit else None,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/lines", get_lines)
    app.router.add_get("/api/v1/status", get_status)
    app.router.add_put("/api/v1/lines/{server}/{line}/quarantine", put_quarantine)
    app.router.add_delete("/api/v1/lines/{server}/{line}/quarantine", delete_quarantine)
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_get("/api/v1/messages", list_messages)
    app.router.add_get("/api/v1/messages/{id}", get_message)
    app.router.add_delete("/api/v1/messages/{id}", delete_message)
    app.router.add_get("/api/v1/inbound", list_inbound)
    app.router.add_post("/api/v1/alertmanager", post_alertmanager)
    app.router.add_get("/api/v1/openapi.json", get_openapi)


async def get_openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)
