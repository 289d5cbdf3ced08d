"""A message request checked into a NewMessage; every refusal names its field.

The body's shape (fields, JSON types, lengths, enums) is MessageRequest's (accept/requests.py),
which also documents it; what the model cannot know is checked here after it. A refusal of
the model is put in the words the API has always used, naming the first failing field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from goipd.accept.numbers import normalise_number
from goipd.accept.requests import (
    MESSAGE_FIELDS,
    MESSAGE_REQUEST,
    MessageRequest,
    first_error,
    unknown_field,
    value_at,
)
from goipd.callbacks.events import DEFAULT_EVENTS, EVENT_STATES
from goipd.callbacks.targets import check_status_url
from goipd.config import ApiSettings, RouteTarget, parse_duration
from goipd.model import NORMAL_PRIORITY, PRIORITIES, NewMessage
from goipd.problem import Problem, json_kind
from goipd.upstream import segments


class CallerDefaults(Protocol):
    """What an API token's configuration says of its messages when they do not."""

    @property
    def status_url(self) -> str | None: ...

    @property
    def status_events(self) -> tuple[str, ...] | None: ...

    @property
    def valid_for(self) -> float | None: ...


class Limits(Protocol):
    """What checking a message needs to know: the API settings, the configured routes, and
    the defaults and callback targets allowed for the caller."""

    @property
    def settings(self) -> Callable[[], ApiSettings]: ...

    @property
    def server_names(self) -> Callable[[], Collection[str]]: ...

    @property
    def cloud_names(self) -> Callable[[], Collection[str]]: ...

    @property
    def caller_defaults(self) -> Callable[[str], CallerDefaults | None]: ...

    @property
    def private_callbacks(self) -> Callable[[], bool]: ...


MAX_SCHEDULE_AHEAD = 30 * 86400.0
MIN_VALIDITY = 10.0
"""Shorter than a dispatch pass and a send: nothing could be sent in time."""
MAX_VALIDITY = 30 * 86400.0
_validate_request = MESSAGE_REQUEST.validator.validate_python
_LABELS = tuple(f"to[{index}]" for index in range(1000))
"""Each recipient's name in a refusal, made once rather than for every number of every
message: only a refused number's is ever read."""


def validate_message(
    body: Any,
    ctx: Limits,
    now: float,
    *,
    client: str = "",
    duplicate_since: float | None = None,
) -> NewMessage:
    """The message `body` asks for, from the API token `client`, checked by the flood guard
    back to `duplicate_since` (None: not checked)."""
    settings = ctx.settings()
    try:
        request: MessageRequest = _validate_request(body)
    except ValidationError as exc:
        raise _refusal(exc, body, settings) from None
    numbers = _recipients(request["to"], settings)
    text = _text(request["text"], settings)
    info = segments.analyse(text)
    send_at_raw = request.get("send_at")
    send_at = None if send_at_raw is None else _parse_send_at(send_at_raw, now)
    defaults = ctx.caller_defaults(client)
    status_url, status_events = _parse_status(request, ctx, defaults)
    route = request.get("route")
    priority = request.get("priority")
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=info.segments,
        encoding=info.encoding,
        route=None if route is None else _parse_route(route, ctx),
        idempotency_key=request.get("idempotency_key"),
        send_at=send_at,
        client=client,
        duplicate_since=duplicate_since,
        priority=NORMAL_PRIORITY if priority is None else priority,
        expires_at=_parse_validity(
            request,
            send_at if send_at is not None else now,
            now,
            defaults.valid_for if defaults is not None else None,
        ),
        status_url=status_url,
        status_events=status_events,
    )


def _recipients(to: object, settings: ApiSettings) -> list[str]:
    """The E.164 numbers `to` names, de-duplicated in their order. Run on what the client sent
    when the model refused `to`, it raises the refusal in phonenumbers' check's own words."""
    items = [to] if isinstance(to, str) else to
    if not isinstance(items, list) or not items:
        raise Problem(422, "to: expected a phone number or a non-empty array of them")
    if len(items) > settings.max_recipients:
        raise Problem(
            422,
            f"to: at most {settings.max_recipients} recipients per message, got {len(items)}",
        )
    region = settings.default_region
    labels = _LABELS if len(items) <= len(_LABELS) else [f"to[{i}]" for i in range(len(items))]
    return list(
        dict.fromkeys(
            [
                normalise_number(raw, region, label)
                for raw, label in zip(items, labels, strict=False)
            ]
        )
    )


def _text(text: str, settings: ApiSettings) -> str:
    """`text` past what the model checks (a string without control characters)."""
    if not text.strip():
        raise Problem(422, "text: must not be empty")
    if text == "0":
        # PHP's empty() holds for "0": the GoIP SMS Server refuses it as an empty text.
        raise Problem(422, 'text: the GoIP SMS Server refuses the text "0" as empty')
    if len(text) > settings.max_text_chars:
        raise Problem(422, f"text: at most {settings.max_text_chars} characters, got {len(text)}")
    return text


def _parse_route(target: RouteTarget, ctx: Limits) -> str:
    if (
        target.server is not None
        and target.server != "*"
        and (target.server not in ctx.server_names())
    ):
        raise Problem(422, f"route.server: no server named {target.server[:32]!r}")
    if target.cloud is not None and target.cloud not in ctx.cloud_names():
        raise Problem(422, f"route.cloud: provider {target.cloud!r} is not configured")
    return json.dumps(target.model_dump(exclude_none=True), ensure_ascii=False)


def parse_time(value: str, field: str) -> float:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            422, f"{field}: expected an RFC 3339 time like 2026-01-31T09:00:00+08:00"
        ) from None
    if when.tzinfo is None:
        raise Problem(422, f"{field}: the time needs a UTC offset (e.g. +08:00 or Z)")
    return when.timestamp()


def _parse_send_at(value: str, now: float) -> float | None:
    at = parse_time(value, "send_at")
    if at > now + MAX_SCHEDULE_AHEAD:
        raise Problem(422, "send_at: at most 30 days ahead")
    return at if at > now else None


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, int | float | str) else json_kind(value)


def _parse_validity(
    request: MessageRequest, start: float, now: float, default: float | None
) -> float | None:
    """The validity end the request asks for (`expires_at`, or `valid_for` counted from
    `start`, when the message is due), else `default` counted from `start`; None: no end."""
    expires_raw, valid_raw = request.get("expires_at"), request.get("valid_for")
    if expires_raw is not None and valid_raw is not None:
        raise Problem(422, "expires_at, valid_for: give one of them, not both")
    if expires_raw is not None:
        expires_at = parse_time(expires_raw, "expires_at")
        if expires_at <= now:
            raise Problem(422, "expires_at: already past")
        if expires_at <= start:
            raise Problem(422, "expires_at: must be after send_at")
        return expires_at
    if valid_raw is not None:
        # The model's pattern is parse_duration's grammar: this cannot fail.
        seconds = parse_duration(valid_raw)
        if not MIN_VALIDITY <= seconds <= MAX_VALIDITY:
            raise Problem(422, "valid_for: from 10s to 30d")
        return start + seconds
    return None if default is None else start + default


def _parse_status(
    request: MessageRequest, ctx: Limits, defaults: CallerDefaults | None
) -> tuple[str | None, str | None]:
    """(status_url, status_events as stored) the request or the caller's defaults ask for."""
    url = request.get("status_url")
    events = request.get("status_events")
    if url is None:
        if events is not None and (defaults is None or defaults.status_url is None):
            raise Problem(422, "status_events: needs a status_url to send them to")
        url = defaults.status_url if defaults is not None else None
    else:
        problem = check_status_url(url, ctx.private_callbacks())
        if problem is not None:
            raise Problem(422, f"status_url: {problem}")
    if url is None:
        return None, None
    chosen: Sequence[str]
    if events is not None:
        chosen = events
    elif defaults is not None and defaults.status_events is not None:
        chosen = defaults.status_events
    else:
        chosen = DEFAULT_EVENTS
    return url, ",".join(state for state in EVENT_STATES if state in chosen)


# --- refusals of the model, in the API's words ----------------------------------------------


def _refusal(exc: ValidationError, body: Any, settings: ApiSettings) -> Problem:
    """The first fault of a body the model refused, named as the API always named it: an
    unknown field, then `to`, then the other fields in their order."""
    if not isinstance(body, dict):
        return Problem(400, f"expected a JSON object, got {json_kind(body)}")
    error = first_error(exc)
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        return Problem(422, unknown_field(error["loc"][0], MESSAGE_FIELDS))
    # Raises for whatever the model refuses of `to` (and for numbers it cannot judge), in the
    # words of the checks every number passes, and without listing the faults of every item.
    _recipients(body.get("to"), settings)
    loc = error["loc"]
    field = str(loc[0])
    return Problem(422, _detail(field, error, body.get(field), loc[1:]))


def _detail(field: str, error: ErrorDetails, value: object, rest: tuple[int | str, ...]) -> str:
    """The words for the model's `error` at `field` (`rest`: where inside it), `value` being
    what the client sent there."""
    kind = json_kind(value)
    match field:
        case "text":
            if error["type"] == "string_too_short":
                return "text: must not be empty"
            if error["type"] == "string_pattern_mismatch":
                return "text: control characters are not allowed (newline and tab are)"
            return f"text: expected a string, got {kind}"
        case "idempotency_key":
            return "idempotency_key: expected a string of 1 to 128 characters"
        case "send_at" | "expires_at":
            return f"{field}: expected an RFC 3339 time string, got {kind}"
        case "status_url":
            if error["type"] == "string_type":
                return f"status_url: expected a URL string, got {kind}"
            return f"status_url: {check_status_url(str(value), True)}"
        case "status_events":
            if rest and isinstance(value, list):
                index = rest[0]
                return (
                    f"status_events[{index}]: expected one of {', '.join(EVENT_STATES)}, "
                    f"got {_shown(value_at(value, rest[:1]))}"
                )
            return "status_events: expected a non-empty array of states"
        case "route":
            if not rest and error["type"] == "model_type":
                return f"route: expected an object, got {kind}"
            where = ".".join(str(part) for part in rest)
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            return f"route{'.' + where if where else ''}: {message}"
        case "priority":
            return (
                f"priority: expected an integer from {PRIORITIES[0]} (bulk) to {PRIORITIES[-1]} "
                f"(urgent), {NORMAL_PRIORITY} being normal; got {_shown(value)}"
            )
        case "valid_for":
            if error["type"] == "string_pattern_mismatch":
                return 'valid_for: expected a duration like "5m" or "90s"'
            return f'valid_for: expected a duration like "5m" or "90s", got {kind}'
    return f"{field}: {error['msg']}"
