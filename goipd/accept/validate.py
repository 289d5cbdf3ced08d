"""A message request checked field by field into a NewMessage; every refusal names its field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

import phonenumbers
from pydantic import ValidationError

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


_MESSAGE_FIELDS = frozenset(
    {
        "to",
        "text",
        "route",
        "idempotency_key",
        "send_at",
        "priority",
        "expires_at",
        "valid_for",
        "status_url",
        "status_events",
    }
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_SCHEDULE_AHEAD = 30 * 86400.0
MIN_VALIDITY = 10.0
"""Shorter than a dispatch pass and a send: nothing could be sent in time."""
MAX_VALIDITY = 30 * 86400.0


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


def _parse_route(value: object, ctx: Limits) -> str | None:
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


def _parse_priority(value: object) -> int:
    if value is None:
        return NORMAL_PRIORITY
    # bool is an int to Python, never a priority to a caller.
    if not isinstance(value, int) or isinstance(value, bool) or value not in PRIORITIES:
        raise Problem(
            422,
            f"priority: expected an integer from {PRIORITIES[0]} (bulk) to {PRIORITIES[-1]} "
            f"(urgent), {NORMAL_PRIORITY} being normal; got {_shown(value)}",
        )
    return value


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, int | float | str) else json_kind(value)


def _parse_validity(
    body: dict[str, Any], start: float, now: float, default: float | None
) -> float | None:
    """The validity end the body asks for (`expires_at`, or `valid_for` counted from `start`,
    when the message is due), else `default` counted from `start`; None: no end."""
    expires_raw, valid_raw = body.get("expires_at"), body.get("valid_for")
    if expires_raw is not None and valid_raw is not None:
        raise Problem(422, "expires_at, valid_for: give one of them, not both")
    if expires_raw is not None:
        expires_at = _parse_time(expires_raw, "expires_at")
        if expires_at <= now:
            raise Problem(422, "expires_at: already past")
        if expires_at <= start:
            raise Problem(422, "expires_at: must be after send_at")
        return expires_at
    if valid_raw is not None:
        if not isinstance(valid_raw, str):
            raise Problem(
                422,
                f'valid_for: expected a duration like "5m" or "90s", got {json_kind(valid_raw)}',
            )
        try:
            seconds = parse_duration(valid_raw)
        except ValueError:
            raise Problem(422, 'valid_for: expected a duration like "5m" or "90s"') from None
        if not MIN_VALIDITY <= seconds <= MAX_VALIDITY:
            raise Problem(422, "valid_for: from 10s to 30d")
        return start + seconds
    return None if default is None else start + default


def _parse_status(
    body: dict[str, Any], ctx: Limits, defaults: CallerDefaults | None
) -> tuple[str | None, str | None]:
    """(status_url, status_events as stored) the body or the caller's defaults ask for."""
    url = body.get("status_url")
    events = body.get("status_events")
    if url is None:
        if events is not None and (defaults is None or defaults.status_url is None):
            raise Problem(422, "status_events: needs a status_url to send them to")
        url = defaults.status_url if defaults is not None else None
    elif not isinstance(url, str):
        raise Problem(422, f"status_url: expected a URL string, got {json_kind(url)}")
    else:
        problem = check_status_url(url, ctx.private_callbacks())
        if problem is not None:
            raise Problem(422, f"status_url: {problem}")
    if url is None:
        return None, None
    if events is None:
        chosen: Sequence[str] = (
            defaults.status_events
            if defaults is not None and defaults.status_events is not None
            else DEFAULT_EVENTS
        )
    elif not isinstance(events, list) or not events:
        raise Problem(422, "status_events: expected a non-empty array of states")
    else:
        for index, event in enumerate(events):
            if event not in EVENT_STATES:
                raise Problem(
                    422,
                    f"status_events[{index}]: expected one of {', '.join(EVENT_STATES)}, "
                    f"got {_shown(event)}",
                )
        chosen = events
    return url, ",".join(state for state in EVENT_STATES if state in chosen)


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
    if text == "0":
        # PHP's empty() holds for "0": the GoIP SMS Server refuses it as an empty text.
        raise Problem(422, 'text: the GoIP SMS Server refuses the text "0" as empty')
    if len(text) > settings.max_text_chars:
        raise Problem(422, f"text: at most {settings.max_text_chars} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise Problem(422, "text: control characters are not allowed (newline and tab are)")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        raise Problem(422, "idempotency_key: expected a string of 1 to 128 characters")
    info = segments.analyse(text)
    send_at = _parse_send_at(body.get("send_at"), now)
    defaults = ctx.caller_defaults(client)
    status_url, status_events = _parse_status(body, ctx, defaults)
    return NewMessage(
        text=text,
        recipients=numbers,
        segments=info.segments,
        encoding=info.encoding,
        route=_parse_route(body.get("route"), ctx),
        idempotency_key=key,
        send_at=send_at,
        client=client,
        duplicate_since=duplicate_since,
        priority=_parse_priority(body.get("priority")),
        expires_at=_parse_validity(
            body,
            send_at if send_at is not None else now,
            now,
            defaults.valid_for if defaults is not None else None,
        ),
        status_url=status_url,
        status_events=status_events,
    )
