"""YAML configuration → typed, validated settings.

Two passes: pydantic checks the shape (strict, unknown keys rejected), then secrets are resolved
from `X` / `X_env` / `X_file`. Every problem is reported as `FILE: key.path: message`, and no
message ever echoes the value of a secret.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from goipd.model import USSD_CODE

DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
"""One number and unit of a duration (`parse_duration`; the API's `valid_for` pattern is built
from it, so ASCII digits: a JSON Schema validator reads `\\d` as 0-9 only)."""
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,32}$")


def parse_duration(value: object) -> float:
    """`15s`, `2m`, `1h30m`, `250ms` → seconds. Bare numbers are refused: is 15 seconds or ms?"""
    if isinstance(value, str):
        text = value.strip()
        pos = 0
        total = 0.0
        while pos < len(text):
            match = DURATION_PART.match(text, pos)
            if match is None:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"expected a duration like 15s, got {_show(value)}")


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _show(value: object) -> str:
    """A short, safe rendering of a user value for error messages."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return '"' + shown.replace('"', '\\"') + '"'
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return f"a {type(value).__name__}"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0s, got {format_duration(value)}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_listen(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ValueError(f'expected "host:port" like "127.0.0.1:8080", got {_show(value)}')
    return value


class ApiTokenSettings(_Strict):
    """One API client: its token, and what its messages get when they do not say."""

    token: SecretStr | None = None
    token_env: str | None = None
    token_file: str | None = None
    status_url: str | None = None
    """Where its messages' state changes are POSTed unless a message names another URL."""
    status_events: tuple[str, ...] | None = None
    signing_secret: SecretStr | None = None
    """Signs its status callbacks (Goipd-Signature); default: the token itself."""
    signing_secret_env: str | None = None
    signing_secret_file: str | None = None
    valid_for: Duration | None = None
    """Default validity of its messages (not handed to an upstream by then: expired)."""

    @field_validator("status_events")
    @classmethod
    def _events(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        unknown = [v for v in value if v not in STATUS_EVENT_STATES]
        if unknown:
            raise ValueError(
                f"unknown state {_show(unknown[0])}; expected some of "
                + ", ".join(STATUS_EVENT_STATES)
            )
        if not value:
            raise ValueError("give at least one state, or leave status_events out")
        return tuple(dict.fromkeys(value))

    @field_validator("valid_for")
    @classmethod
    def _valid_for(cls, value: float | None) -> float | None:
        return None if value is None else _positive(value)


_TOKEN_TAGS = ("plain token", "token mapping")


def _token_kind(value: object) -> str:
    return _TOKEN_TAGS[1] if isinstance(value, dict | ApiTokenSettings) else _TOKEN_TAGS[0]


TokenEntry = Annotated[
    Annotated[SecretStr, Tag(_TOKEN_TAGS[0])] | Annotated[ApiTokenSettings, Tag(_TOKEN_TAGS[1])],
    Discriminator(_token_kind),
]


class HttpSettings(_Strict):
    listen: Annotated[str, BeforeValidator(lambda v: _check_listen(v) if isinstance(v, str) else v)]
    api_tokens: tuple[TokenEntry, ...] = ()
    """A plain token, or a mapping with the token and its client's defaults."""
    api_tokens_file: str | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    public_url: (
        Annotated[str, BeforeValidator(lambda v: _http_url(v) if isinstance(v, str) else v)] | None
    ) = None
    """Where cloud providers reach goipd's hooks (behind a proxy, not `listen`); smsgo is told
    its delivery-report and reply URLs from it on every send."""

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StorageSettings(_Strict):
    url: str = "sqlite:///var/lib/goipd/goipd.db"
    pg_schema: str = "goipd"
    """PostgreSQL only: the schema goipd's tables live in (instances sharing a ledger use the
    same one)."""

    @field_validator("pg_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError(f"expected a lower-case SQL identifier, got {_show(value)}")
        return value

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        # Only the part after "@" is echoed: a PostgreSQL URL may carry a password.
        shown = _show(value.split("@")[-1])
        raise ValueError(f"expected sqlite:///PATH or postgresql://USER@HOST/DB, got {shown}")

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url[len("sqlite:///") :]) if self.url.startswith("sqlite:") else None


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class PollingSettings(_Strict):
    jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Fraction of each server's poll interval used as random start offset, so a rack of
    servers configured alike does not get polled in lock-step."""
    backoff_max: Duration = 300.0


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(f"expected 1-32 characters of [a-z0-9_-], got {_show(value)}")
    return value


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {_show(value)}")
    if parts.username or parts.password:
        raise ValueError("credentials belong in username/password, not in the URL")
    # goipd appends its own paths and queries to it: a query or fragment here would be lost
    # or end up in the middle of them.
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"expected no query or fragment in the URL, got {_show(value)}")
    try:
        port = parts.port  # urlsplit checks it only when it is read
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"expected a port from 1 to 65535 in the URL, got {_show(value)}")
    return value.rstrip("/")


Name = Annotated[str, AfterValidator(_check_name)]
"""A server's or a device's name: it appears in metric labels, URLs and the CLI."""
BaseUrl = Annotated[str, AfterValidator(_check_base_url)]
"""Where an SMS Server or a device answers; its credentials are separate keys."""


class DeviceSettings(_Strict):
    """A GoIP device behind an SMS Server, polled for its status.xml (signal, operator, SIM)."""

    name: Name
    url: BaseUrl
    """The device's web interface, e.g. http://192.168.1.20."""
    username: str = "admin"
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: str | None = None
    lines: dict[int, str]
    """Device port (1-32) → the SMS Server's line ID (goip_line) on that port."""
    poll_interval: Duration = 60.0
    timeout: Duration = 5.0

    @field_validator("lines")
    @classmethod
    def _ports(cls, value: dict[int, str]) -> dict[int, str]:
        if not value:
            raise ValueError("name at least one port: {1: G101, ...}")
        for port, line in value.items():
            if not 1 <= port <= 32:
                raise ValueError(f"ports are 1 to 32, got {port}")
            if not line or len(line) > 64:
                raise ValueError(f"port {port}: expected a line ID, got {_show(line)}")
        if len(set(value.values())) < len(value):
            raise ValueError("a line ID is given for two ports")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 1:
            raise ValueError(f"expected at least 1s, got {format_duration(value)}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        return _positive(value)


class ServerSettings(_Strict):
    name: Name
    url: BaseUrl
    username: str
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: str | None = None
    poll_interval: Duration = 15.0
    timeout: Duration = 5.0
    send_timeout: Duration = 30.0
    """sendsms only: the server stores the task, then waits up to 15 s for its engine."""
    max_sends_in_flight: int = Field(default=4, ge=1, le=64)
    """sendsms calls open at once: a slow engine holds at most this many of goipd's sends."""
    escape_text: bool = True
    """v1.28.4 puts the text into its SQL unescaped: goipd escapes it so the phone gets it
    exactly. False for a server that escapes the text itself."""
    hook_token: SecretStr | None = None
    hook_token_env: str | None = None
    hook_token_file: str | None = None
    hook_allow: tuple[str, ...] = ()
    inbox_interval: Duration = 300.0
    """How often the server's web inbox is read for inbound SMS whose push was lost (also at
    start); 0 never reads it."""
    inbox_lookback: Duration = 86400.0
    """The first read of an inbox goipd never read takes SMS this much older than its newest."""
    stall_after: Duration = 120.0
    """Handed-over sends still `unsend` this long while none of the server's sends moved on:
    its engine is stalled (docs/real-sms-server.md#a-stalled-engine)."""
    on_stall: Literal["wait", "move"] = "wait"
    """What becomes of sends a stalled server holds: `wait` for its engine (up to a day, as the
    engine keeps them), or `move` them to other routes (sent twice if the engine returns)."""
    groups: dict[str, tuple[str, ...]] = {}
    """Carrier group (the SMS Server's "provider") → its line IDs. querylines does not say
    which group a line is in; with this map goipd picks the line itself, health-aware."""
    devices: tuple[DeviceSettings, ...] = ()
    """The GoIP devices behind this server whose web status goipd polls (optional)."""

    @field_validator("poll_interval", "timeout", "send_timeout", "stall_after")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        return _positive(value)

    @field_validator("inbox_interval")
    @classmethod
    def _inbox_interval(cls, value: float) -> float:
        if value != 0 and value < 10:
            raise ValueError(f"expected 0 (never) or at least 10s, got {format_duration(value)}")
        return value

    @field_validator("hook_allow")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or networks like 10.0.0.0/24, got {_show(item)}"
                ) from None
        return value


class RouteTarget(_Strict):
    """One hop of a route: exactly one of server (optionally narrowed) or cloud."""

    server: str | None = None
    """A configured server name, or "*" for any server."""
    provider: str | None = None
    """Carrier group on that server (sendsms `provider`)."""
    line: str | None = None
    """Exact line on that server (sendsms `goip_line`)."""
    cloud: Literal["smsgo", "paasoo", "c123"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RouteTarget:
        if (self.server is None) == (self.cloud is None):
            raise ValueError("give either server (with optional provider or line) or cloud")
        if self.cloud is not None and (self.provider or self.line):
            raise ValueError("provider and line apply to a server, not to a cloud route")
        if self.provider and self.line:
            raise ValueError("give provider or line, not both (the SMS Server ignores provider)")
        if self.server == "*" and (self.provider or self.line):
            raise ValueError('provider and line need a named server, not "*"')
        return self

    def describe(self) -> str:
        if self.cloud:
            return f"cloud:{self.cloud}"
        suffix = f"/{self.line}" if self.line else f"[{self.provider}]" if self.provider else ""
        return f"{self.server}{suffix}"


class RouteMatch(_Strict):
    prefix: tuple[str, ...] = ()
    """E.164 prefixes like "+886" or "+8869"."""
    country: tuple[str, ...] = ()
    """ISO 3166 region codes like "TW" (from the phonenumbers library)."""

    @field_validator("prefix")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(r"\+\d{1,15}", item):
                raise ValueError(f'expected E.164 prefixes like "+886", got {_show(item)}')
        return value

    @field_validator("country")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(r"[A-Z]{2}", item):
                raise ValueError(f'expected ISO region codes like "TW", got {_show(item)}')
        return value


class RouteRule(_Strict):
    match: RouteMatch = RouteMatch()
    """Empty match = every destination (a default rule, usually last)."""
    via: tuple[RouteTarget, ...] = Field(min_length=1)


class RoutingSettings(_Strict):
    line_rate_per_minute: int = Field(default=6, ge=1, le=600)
    """SMS a line may send per minute; GSM modules manage about 6-10."""
    max_attempts: int = Field(default=4, ge=1, le=20)
    """Sends of one recipient before it fails (line errors retry on another line)."""
    quarantine_after: int = Field(default=3, ge=1, le=100)
    """Consecutive line-class CMS errors that quarantine a line."""
    quarantine_for: Duration = 600.0
    retry_delay: Duration = 5.0
    """Wait before a recipient with no usable route is tried again (doubles per attempt)."""
    max_queue_age: Duration = 86400.0
    """A recipient still not sent after this long fails with reason expired."""
    provider_probe_interval: Duration = 600.0
    """A cloud provider disabled by an account refusal (credentials, credit) is given one
    send as a probe this often, so it comes back by itself once fixed. 0s: only a balance
    poll with credit left or a reload brings it back."""


class ApiSettings(_Strict):
    default_region: str = "TW"
    """Region for numbers written without a country code (ISO 3166, e.g. TW, CN)."""
    max_recipients: int = Field(default=1000, ge=1, le=100_000)
    max_text_chars: int = Field(default=1530, ge=1, le=10_000)
    """1530 = 10 concatenated GSM-7 segments; longer texts are refused, never truncated."""
    duplicate_window: Duration = 600.0
    """Same number + same text within this window is refused (409): the flood guard.
    0s turns the guard off."""
    rate_limit: float = Field(default=0.0, ge=0.0, le=100_000.0)
    """Requests per second allowed per API token on /api/* (0 = unlimited); over it: 429."""
    rate_limit_burst: int = Field(default=50, ge=1, le=100_000)

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError(f'expected an ISO region code like "TW", got {_show(value)}')
        return value


class ReconcileSettings(_Strict):
    interval: Duration = 30.0
    """How often submitted sends without a report are looked for."""
    query_after: Duration = 120.0
    """A send still `submitted` this long after the SMS Server accepted it is asked about with
    querysms (its push report may be lost)."""
    report_deadline: Duration = 3600.0
    """Still no result after this long: the recipient fails with reason report_timeout
    (server_removed when a reload removed its server)."""


class InboundSettings(_Strict):
    forward_urls: tuple[str, ...] = ()
    """Every inbound SMS is POSTed as JSON to each URL, at least once, retried with backoff."""
    forward_timeout: Duration = 10.0
    forward_give_up_after: Duration = 86400.0

    @field_validator("forward_urls")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected http:// or https:// URLs, got {_show(url)}")
        return value


STATUS_URL_MAX = 2048
STATUS_EVENT_STATES: tuple[str, ...] = (
    "submitted",
    "sent",
    "delivered",
    "failed",
    "cancelled",
    "expired",
)
"""The states a caller may ask to be told about (the internal `dispatching` never is)."""
DEFAULT_STATUS_EVENTS: tuple[str, ...] = ("sent", "delivered", "failed", "cancelled", "expired")
"""Reported when a caller gives a status_url but no status_events."""


class CallbackSettings(_Strict):
    """Status callbacks: recipient state changes POSTed to the callers' status_url
    (docs/status-callbacks.md)."""

    allow_private: bool = False
    """Allow status URLs whose host is (or resolves to) a loopback, private, link-local or
    otherwise non-public address. Off, goipd cannot be used to reach into its own network."""
    timeout: Duration = 10.0
    give_up_after: Duration = 86400.0
    """An event not delivered this long after its state change is dropped (counted given_up)."""
    max_pending_per_receiver: int = Field(default=10_000, ge=1, le=10_000_000)
    """Beyond this many stored events for one receiver (scheme://host:port) its oldest are
    dropped (counted dropped_over_cap): a receiver gone for good cannot fill the ledger."""
    max_in_flight: int = Field(default=16, ge=1, le=1024)
    max_in_flight_per_receiver: int = Field(default=4, ge=1, le=1024)
    """Concurrent POSTs to one receiver: one that hangs holds at most this many of
    max_in_flight, so the others keep being served."""
    retry_min: Duration = 5.0
    """Back-off after a receiver's first failure; doubled per failure in a row (with jitter)."""
    retry_max: Duration = 600.0
    poll_interval: Duration = 1.0
    """How often stored events are looked for (besides at once after a delivery)."""
    signing_secret: SecretStr | None = None
    """Signs the events of messages accepted without a token (an API open on loopback);
    without it they cannot be signed and are dropped (counted unsigned)."""
    signing_secret_env: str | None = None
    signing_secret_file: str | None = None

    @field_validator("timeout", "retry_min", "retry_max", "poll_interval", "give_up_after")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        return _positive(value)

    @model_validator(mode="after")
    def _ordered(self) -> CallbackSettings:
        if self.retry_max < self.retry_min:
            raise ValueError(
                f"retry_max ({format_duration(self.retry_max)}) must not be shorter than "
                f"retry_min ({format_duration(self.retry_min)})"
            )
        if self.max_in_flight_per_receiver > self.max_in_flight:
            raise ValueError(
                f"max_in_flight_per_receiver ({self.max_in_flight_per_receiver}) must not be "
                f"more than max_in_flight ({self.max_in_flight})"
            )
        return self


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a status callback may not go to this address unless callbacks.allow_private (SSRF:
    goipd must not become a way into its own network); None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, hit in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("shared (carrier-grade NAT)", address in ipaddress.ip_network("100.64.0.0/10")),
    ):
        if hit:
            return f"{address} is a {kind} address"
    return None


def check_status_url(url: str, allow_private: bool) -> str | None:
    """The problem with a status callback URL, for a 422 or a config error; None if it is
    acceptable. Only literal addresses are judged here: host names are resolved and checked
    at every delivery (goipd/callbacks/targets.py), where DNS cannot be changed under us."""
    if not isinstance(url, str) or not url:
        return "expected an http:// or https:// URL"
    if len(url) > STATUS_URL_MAX:
        return f"must be at most {STATUS_URL_MAX} characters, got {len(url)}"
    if any(ord(c) <= 32 or ord(c) >= 127 for c in url):
        # ASCII only (punycode hosts, percent-encoded paths): the ledger derives each URL's
        # receiver in SQL, whose lower() folds ASCII alone.
        return "must be ASCII without spaces or control characters (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got scheme {_show(parts.scheme)}"
    host = parts.hostname
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        # Basic-auth credentials in the URL would be stored with every event and end up in
        # logs of proxies; the signature authenticates goipd to the receiver instead.
        return "must not carry user:password@ credentials; verify the Goipd-Signature header"
    if port == 0:
        return "port 0 is not a valid port"
    if allow_private:
        return None
    if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
        return f"{host} is a loopback host (set callbacks.allow_private to allow it)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    problem = refused_address(address)
    return None if problem is None else f"{problem} (set callbacks.allow_private to allow it)"


class HaSettings(_Strict):
    """Several goipd instances on one PostgreSQL ledger (docs/high-availability.md)."""

    instance_id: str | None = None
    """This instance's name in leases and claims; default: host name + a random suffix, new
    at every start (on SQLite: the host name)."""
    lease_ttl: Duration | None = None
    """How long a polling lease lasts without renewal (renewed every third of it); default:
    the shortest poll_interval, between 1s and 15s."""

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError(f"expected 1-64 of A-Z a-z 0-9 _ . -, got {_show(value)}")
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, value: float | None) -> float | None:
        if value is not None and not 0.3 <= value <= 600:
            raise ValueError(f"must be between 300ms and 10m, got {format_duration(value)}")
        return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {_show(value)}")
    return value.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(lambda v: _http_url(v) if isinstance(v, str) else v)]


class _CloudBase(_Strict):
    timeout: Duration = 10.0
    balance_interval: Duration = 300.0
    hook_token: SecretStr | None = None
    hook_token_env: str | None = None
    hook_token_file: str | None = None


class SmsgoSettings(_CloudBase):
    username: str
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: str | None = None
    url: HttpUrl = "https://www.smsgo.com.tw/sms_gw"
    backup_url: HttpUrl = "http://www2.smsgo.com.tw/sms_gw"
    schedule_ahead: Duration = 0.0
    """Scheduled messages whose route starts with smsgo are handed over this long before
    their time (`dlvtime`), so smsgo sends them on time even if goipd is down then; DELETE
    still cancels them there. 0s: goipd keeps them until they are due."""


class PaasooSettings(_CloudBase):
    key: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    url: HttpUrl = "http://api.paasoo.com"


class C123Settings(_CloudBase):
    uid: str
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: str | None = None
    url: HttpUrl = "http://http.c123.com"
    schedule_ahead: Duration = 0.0
    """Like smsgo's: scheduled messages routed first to c123 are handed over this long
    before their time (`time`). c123 cannot cancel them once handed over."""
    reply_poll_interval: Duration = 600.0
    """c123 hands out each reply once and asks clients not to poll more often than this."""

    @field_validator("reply_poll_interval")
    @classmethod
    def _not_too_often(cls, value: float) -> float:
        if value < 600.0:
            raise ValueError(
                f"c123 allows at most one reply poll per 10m, got {format_duration(value)}"
            )
        return value


class ProvidersSettings(_Strict):
    smsgo: SmsgoSettings | None = None
    paasoo: PaasooSettings | None = None
    c123: C123Settings | None = None


@dataclass(frozen=True)
class CloudProviderConfig:
    """A configured cloud provider with its secrets resolved."""

    name: Literal["smsgo", "paasoo", "c123"]
    settings: SmsgoSettings | PaasooSettings | C123Settings
    secret: SecretStr
    hook_token: SecretStr | None


# --- alerting: the Alertmanager receiver (POST /api/v1/alertmanager) ---------------------------


class AlertReceiverSettings(_Strict):
    """One Alertmanager receiver: its notifications become one SMS to every number in `to`."""

    to: tuple[str, ...] = Field(min_length=1)
    """Phone numbers; without a country code they are read in api.default_region. Once
    resolved: E.164, de-duplicated."""
    route: RouteTarget | None = None
    """Forced route, like the API's `route`; None = the routing rules."""
    max_segments: int = Field(default=2, ge=1, le=10)
    """The rendered SMS is trimmed (with an ellipsis) to fit this many SMS segments."""


class AlertRateLimitSettings(_Strict):
    max_messages: int = Field(default=10, ge=1, le=10_000)
    per: Duration = 3600.0

    @field_validator("per")
    @classmethod
    def _positive_per(cls, value: float) -> float:
        return _positive(value)


class AlertingSettings(_Strict):
    receivers: dict[str, AlertReceiverSettings] = {}
    """Alertmanager receiver name (its `receivers[].name`) → where its SMS go."""
    dedup_window: Duration = 300.0
    """A notification with the same groupKey and status as one sent less than this long ago
    sends nothing. 0s turns de-duplication off."""
    rate_limit: AlertRateLimitSettings = AlertRateLimitSettings()
    """Per phone number, over all receivers: at most max_messages alert SMS per `per`."""

    @field_validator("receivers")
    @classmethod
    def _receiver_names(
        cls, value: dict[str, AlertReceiverSettings]
    ) -> dict[str, AlertReceiverSettings]:
        for name in value:
            if not 1 <= len(name) <= 128 or not name.isprintable():
                raise ValueError(
                    f"receiver names are 1-128 printable characters, got {_show(name)}"
                )
        return value


def _alerting_problems(
    raw: RawSettings, servers: Mapping[str, int]
) -> tuple[AlertingSettings, list[tuple[str, str]]]:
    """Numbers parsed like the API parses them (api.default_region), forced routes checked
    against the configured servers and providers."""
    problems: list[tuple[str, str]] = []
    region = raw.api.default_region
    receivers: dict[str, AlertReceiverSettings] = {}
    for name, receiver in raw.alerting.receivers.items():
        path = f"alerting.receivers.{name}"
        numbers: list[str] = []
        for index, number in enumerate(receiver.to):
            try:
                parsed = phonenumbers.parse(number, region)
                valid = phonenumbers.is_valid_number(parsed)
            except phonenumbers.NumberParseException:
                valid = False
            if not valid:
                problems.append(
                    (
                        f"{path}.to[{index}]",
                        f"{_show(number)} is not a valid phone number (default region {region})",
                    )
                )
                continue
            numbers.append(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
        numbers = list(dict.fromkeys(numbers))
        if len(numbers) > raw.api.max_recipients:
            problems.append(
                (f"{path}.to", f"at most api.max_recipients ({raw.api.max_recipients}) numbers")
            )
        target = receiver.route
        if target is not None and target.cloud is not None:
            if getattr(raw.providers, target.cloud) is None:
                problems.append(
                    (
                        f"{path}.route.cloud",
                        f"provider {target.cloud} is not configured under providers.{target.cloud}",
                    )
                )
        elif target is not None and target.server != "*" and target.server not in servers:
            problems.append((f"{path}.route.server", f'no server named "{target.server}"'))
        receivers[name] = receiver.model_copy(update={"to": tuple(numbers)})
    return raw.alerting.model_copy(update={"receivers": receivers}), problems


# --- end of alerting ----------------------------------------------------------------------------


def _cron(value: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(
            f'expected a crontab schedule like "0 8,14,20 * * *" ({exc}), got {_show(value)}'
        ) from None
    return value


Cron = Annotated[str, BeforeValidator(lambda v: _cron(v) if isinstance(v, str) else v)]


class BalanceCheck(_Strict):
    """How the prepaid balance of some lines is read: a USSD code, and a pattern for the
    carrier's answer. The lines: those of `server`, narrowed to a carrier group (`provider`,
    from servers[].groups) or one `line`; for a line, the most specific check applies."""

    server: str
    provider: str | None = None
    line: str | None = None
    code: str
    pattern: str
    """A regular expression finding the balance in the answer: its group `balance`, else its
    first group, else the whole match."""
    decimal: Literal[".", ","] | None = None
    """The carrier's decimal mark when `1.234` could be ambiguous; None guesses."""
    low: float | None = None
    """A balance below this is low (GoipdLineBalanceLow); None: never."""
    schedule: Cron | None = None
    """This check's own schedule; None: balances.schedule."""

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not USSD_CODE.fullmatch(value):
            raise ValueError(f"expected a USSD code of 0-9 * # + like *101#, got {_show(value)}")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_narrowing(self) -> BalanceCheck:
        if self.provider is not None and self.line is not None:
            raise ValueError("give provider or line, not both")
        return self


class BalanceSettings(_Strict):
    schedule: Cron = "0 8,14,20 * * *"
    """When balances are read (crontab, goipd's local time): a USSD session costs the carrier
    nothing, but a line answering one cannot send."""
    answer_timeout: Duration = 130.0
    """How long a USSD answer may take: the SMS Server waits 2 x 60 s for the device."""
    checks: tuple[BalanceCheck, ...] = ()

    @field_validator("answer_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        return _positive(value)


class RemediationSettings(_Strict):
    """Self-healing lines: a line stuck unregistered, or quarantined after line errors, gets
    its module rebooted through the SMS Server."""

    enabled: bool = False
    unregistered_for: Duration = 600.0
    """A line online but not registered this long is rebooted."""
    quarantined_for: Duration = 600.0
    """A line quarantined after line errors this long is rebooted."""
    cooldown: Duration = 21600.0
    """At most one reboot per line in this time."""
    max_per_server: int = Field(default=2, ge=1, le=32)
    """Lines of one server being rebooted and waited for at once."""
    recovery_wait: Duration = 300.0
    """A rebooted line not registered again after this long: the remediation failed."""

    @field_validator("unregistered_for", "quarantined_for", "cooldown", "recovery_wait")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        return _positive(value)


class RawSettings(_Strict):
    http: HttpSettings = HttpSettings(listen="127.0.0.1:8080")
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    polling: PollingSettings = PollingSettings()
    servers: tuple[ServerSettings, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    routes: tuple[RouteRule, ...] = ()
    api: ApiSettings = ApiSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    inbound: InboundSettings = InboundSettings()
    providers: ProvidersSettings = ProvidersSettings()
    alerting: AlertingSettings = AlertingSettings()
    ha: HaSettings = HaSettings()
    callbacks: CallbackSettings = CallbackSettings()
    balances: BalanceSettings = BalanceSettings()
    remediation: RemediationSettings = RemediationSettings()


# --- resolved settings: what the rest of goipd sees --------------------------------------------


GOIP_STATUS_HOOK = "/hooks/goip/{server}/status"
GOIP_INBOUND_HOOK = "/hooks/goip/{server}/inbound"
GOIP_PUSH_URL_MAX = 128
"""The SMS Server keeps push URLs in varchar(128) and cuts longer ones without a word, which
breaks the token at their end: every push then fails."""
SLOW_ENGINE_WAIT = 15.0
"""How long v1.28.4's sendsms may wait for its engine before it answers ACCEPT anyway."""


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    username: str
    password: SecretStr
    poll_interval: float
    timeout: float
    hook_token: SecretStr | None
    hook_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    groups: Mapping[str, tuple[str, ...]]
    send_timeout: float = 30.0
    max_sends_in_flight: int = 4
    escape_text: bool = True
    inbox_interval: float = 300.0
    inbox_lookback: float = 86400.0
    stall_after: float = 120.0
    on_stall: Literal["wait", "move"] = "wait"
    devices: tuple[Device, ...] = ()

    def push_urls(self, public_url: str) -> tuple[str, str] | None:
        """The send-result and inbound push URLs to paste into this SMS Server, for goipd
        reached at `public_url`; None without a hook_token (pushes are then refused)."""
        if self.hook_token is None:
            return None
        base = public_url.rstrip("/")
        query = f"?token={self.hook_token.get_secret_value()}"
        return (
            base + GOIP_STATUS_HOOK.format(server=self.name) + query,
            base + GOIP_INBOUND_HOOK.format(server=self.name) + query,
        )


@dataclass(frozen=True)
class Device:
    name: str
    url: str
    username: str
    password: SecretStr
    lines: Mapping[int, str]
    poll_interval: float = 60.0
    timeout: float = 5.0


@dataclass(frozen=True)
class ApiClient:
    """What an API token's messages get by default, and how their status callbacks are
    signed. Keyed by the token's fingerprint (goipd/web/auth.py)."""

    status_url: str | None
    status_events: tuple[str, ...] | None
    signing_secret: SecretStr
    valid_for: float | None


def token_fingerprint(token: str) -> str:
    """The same as goipd/web/auth.py's: sha256 hex, first 12; '' for no token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


@dataclass(frozen=True)
class Settings:
    source: Path | None
    http: HttpSettings
    api_tokens: tuple[SecretStr, ...]
    storage: StorageSettings
    logging: LoggingSettings
    polling: PollingSettings
    servers: tuple[Server, ...]
    routing: RoutingSettings
    routes: tuple[RouteRule, ...]
    api: ApiSettings
    reconcile: ReconcileSettings
    inbound: InboundSettings
    providers: tuple[CloudProviderConfig, ...] = ()
    alerting: AlertingSettings = AlertingSettings()  # noqa: RUF009 - frozen, safe to share
    """Receivers' numbers in E.164."""
    ha: HaSettings = HaSettings()  # noqa: RUF009 - frozen, safe to share
    callbacks: CallbackSettings = CallbackSettings()  # noqa: RUF009 - frozen, safe to share
    api_clients: Mapping[str, ApiClient] = field(default_factory=dict)
    """Token fingerprint → its client's defaults and signing secret; every token has one."""
    callback_secret: SecretStr | None = None
    """callbacks.signing_secret resolved: signs events of messages accepted without a token."""
    balances: BalanceSettings = BalanceSettings()  # noqa: RUF009 - frozen, safe to share
    remediation: RemediationSettings = RemediationSettings()  # noqa: RUF009 - frozen
    warnings: tuple[str, ...] = ()
    inline_secrets: bool = False
    """Some secret is written in the config file itself (not via _env/_file)."""

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)

    @property
    def lease_ttl(self) -> float:
        """ha.lease_ttl, or the shortest poll interval within [1s, 15s]: a dead owner's
        servers are then polled again within two of their intervals."""
        if self.ha.lease_ttl is not None:
            return self.ha.lease_ttl
        shortest = min((s.poll_interval for s in self.servers), default=15.0)
        return min(max(shortest, 1.0), 15.0)


class ConfigError(Exception):
    """Every problem found in a config file, each with its key path."""

    def __init__(self, source: Path | str | None, problems: Sequence[tuple[str, str]]) -> None:
        self.source = str(source) if source is not None else "<config>"
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
            for path, message in self.problems
        ]


# --- loading ------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in a config that hides a mistake, so refuse."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_settings(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [("", f"cannot read file: {exc.__class__.__name__}")]) from None
    settings = parse_settings(text, source=source, environ=environ)
    warnings = list(settings.warnings)
    if settings.inline_secrets and _is_world_readable(source):
        warnings.append(
            f"{source} holds secrets and is readable by every user; chmod 600 it or use "
            "password_file / password_env"
        )
    return Settings(**{**settings.__dict__, "warnings": tuple(warnings)})


def parse_settings(
    text: str, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [("", f"invalid YAML: {where}{exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("", f"invalid YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"expected a mapping at the top level, got {_show(data)}")])
    try:
        raw = RawSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _pydantic_problems(exc)) from None
    return _resolve(raw, source, env)


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        path = _format_loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            message = err["msg"][0].lower() + err["msg"][1:]
        problems.append((path, message))
    return problems


def _format_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "float", *_TOKEN_TAGS):
            # pydantic adds validator/type names into the location of Annotated types
            continue
        else:
            path += f".{part}" if path else part
    return path


def _resolve(raw: RawSettings, source: Path | None, env: Mapping[str, str]) -> Settings:
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    base = source.parent if source is not None else Path.cwd()
    servers: list[Server] = []
    seen: dict[str, int] = {}
    for index, server in enumerate(raw.servers):
        path = f"servers[{index}]"
        if server.name in seen:
            problems.append(
                (f"{path}.name", f'"{server.name}" is already used by servers[{seen[server.name]}]')
            )
        seen.setdefault(server.name, index)
        if server.timeout >= server.poll_interval:
            problems.append(
                (
                    f"{path}.timeout",
                    f"must be shorter than poll_interval ({format_duration(server.poll_interval)})"
                    f", got {format_duration(server.timeout)}",
                )
            )
        if server.send_timeout <= SLOW_ENGINE_WAIT:
            warnings.append(
                f"{path}.send_timeout: {format_duration(server.send_timeout)} is not longer than "
                f"the {format_duration(SLOW_ENGINE_WAIT)} a v1.28.4 SMS Server may take to answer "
                "a send while its engine is busy; such sends are checked with querysms before "
                "they are tried again, which delays them"
            )
        password = _secret(server, "password", path, base, env, problems, required=True)
        hook_token = _secret(server, "hook_token", path, base, env, problems, required=False)
        devices = _resolve_devices(server, path, base, env, problems)
        resolved = Server(
            name=server.name,
            url=server.url,
            username=server.username,
            password=password or SecretStr(""),
            poll_interval=server.poll_interval,
            timeout=server.timeout,
            hook_token=hook_token,
            hook_allow=tuple(ipaddress.ip_network(n, strict=False) for n in server.hook_allow),
            groups=server.groups,
            send_timeout=server.send_timeout,
            max_sends_in_flight=server.max_sends_in_flight,
            escape_text=server.escape_text,
            inbox_interval=server.inbox_interval,
            inbox_lookback=server.inbox_lookback,
            stall_after=server.stall_after,
            on_stall=server.on_stall,
            devices=devices,
        )
        problems.extend(_push_url_problems(resolved, path, raw.http.public_url))
        servers.append(resolved)
    tokens, clients = _resolve_tokens(raw, base, env, problems)
    if not tokens and raw.http.api_tokens_file is None and not _is_loopback(raw.http.host):
        problems.append(
            (
                "http.api_tokens",
                "required when http.listen is not a loopback address "
                "(without tokens the API is open to anyone who can connect)",
            )
        )
    callback_secret = _secret(
        raw.callbacks, "signing_secret", "callbacks", base, env, problems, required=False
    )
    providers = _resolve_providers(raw.providers, base, env, problems)
    problems.extend(_route_problems(raw, seen))
    alerting, alerting_problems = _alerting_problems(raw, seen)
    problems.extend(alerting_problems)
    problems.extend(_balance_problems(raw))
    if problems:
        raise ConfigError(source, problems)
    return Settings(
        source=source,
        http=raw.http,
        api_tokens=tuple(tokens),
        storage=raw.storage,
        logging=raw.logging,
        polling=raw.polling,
        servers=tuple(servers),
        routing=raw.routing,
        routes=raw.routes,
        api=raw.api,
        reconcile=raw.reconcile,
        inbound=raw.inbound,
        providers=providers,
        alerting=alerting,
        ha=raw.ha,
        callbacks=raw.callbacks,
        api_clients=clients,
        callback_secret=callback_secret,
        balances=raw.balances,
        remediation=raw.remediation,
        warnings=tuple(warnings),
        inline_secrets=any(
            not isinstance(t, ApiTokenSettings)
            or t.token is not None
            or t.signing_secret is not None
            for t in raw.http.api_tokens
        )
        or raw.callbacks.signing_secret is not None
        or any(s.password is not None or s.hook_token is not None for s in raw.servers)
        or any(d.password is not None for s in raw.servers for d in s.devices)
        or any(
            p.settings.model_dump().get(k) is not None
            for p in providers
            for k in ("password", "secret", "hook_token")
        ),
    )


def _resolve_devices(
    server: ServerSettings,
    path: str,
    base: Path,
    env: Mapping[str, str],
    problems: list[tuple[str, str]],
) -> tuple[Device, ...]:
    devices: list[Device] = []
    names: dict[str, int] = {}
    ports: dict[str, str] = {}  # line ID → the device and port that has it
    for index, device in enumerate(server.devices):
        where = f"{path}.devices[{index}]"
        if device.name in names:
            problems.append(
                (
                    f"{where}.name",
                    f'"{device.name}" is already used by devices[{names[device.name]}]',
                )
            )
        names.setdefault(device.name, index)
        if device.timeout >= device.poll_interval:
            problems.append(
                (
                    f"{where}.timeout",
                    f"must be shorter than poll_interval ({format_duration(device.poll_interval)})",
                )
            )
        for port, line in sorted(device.lines.items()):
            if line in ports:
                problems.append(
                    (f"{where}.lines.{port}", f"line {line} is already on {ports[line]}")
                )
            ports.setdefault(line, f"{device.name} port {port}")
        password = _secret(device, "password", where, base, env, problems, required=True)
        devices.append(
            Device(
                name=device.name,
                url=device.url,
                username=device.username,
                password=password or SecretStr(""),
                lines=dict(device.lines),
                poll_interval=device.poll_interval,
                timeout=device.timeout,
            )
        )
    return tuple(devices)


def _balance_problems(raw: RawSettings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    servers = {server.name: server for server in raw.servers}
    seen: dict[tuple[str, str | None, str | None], int] = {}
    for index, check in enumerate(raw.balances.checks):
        path = f"balances.checks[{index}]"
        server = servers.get(check.server)
        if server is None:
            problems.append((f"{path}.server", f"no server named {_show(check.server)}"))
            continue
        if check.provider is not None and check.provider not in server.groups:
            problems.append(
                (
                    f"{path}.provider",
                    f"servers[{check.server}].groups has no group {_show(check.provider)}",
                )
            )
        key = (check.server, check.provider, check.line)
        if key in seen:
            problems.append((path, f"the same lines as balances.checks[{seen[key]}]"))
        seen.setdefault(key, index)
    return problems


def _resolve_tokens(
    raw: RawSettings, base: Path, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> tuple[list[SecretStr], dict[str, ApiClient]]:
    """Every API token (config entries, then api_tokens_file lines) and its client entry."""
    tokens: list[SecretStr] = []
    clients: dict[str, ApiClient] = {}
    first_seen: dict[str, tuple[str, bool]] = {}

    def add(token: SecretStr, client: ApiClient, path: str, plain: bool) -> None:
        if len(token.get_secret_value()) < 16:
            problems.append((path, "tokens must be at least 16 characters long"))
            return
        key = token_fingerprint(token.get_secret_value())
        if key in first_seen:
            earlier, earlier_plain = first_seen[key]
            if not (plain and earlier_plain):
                # Which entry's defaults held would depend on the order of the list.
                problems.append((path, f"the same token as {earlier}"))
            return
        first_seen[key] = (path, plain)
        tokens.append(token)
        clients[key] = client

    for index, entry in enumerate(raw.http.api_tokens):
        path = f"http.api_tokens[{index}]"
        if not isinstance(entry, ApiTokenSettings):
            add(entry, ApiClient(None, None, entry, None), path, plain=True)
            continue
        token = _secret(entry, "token", path, base, env, problems, required=True)
        secret = _secret(entry, "signing_secret", path, base, env, problems, required=False)
        if entry.status_url is not None:
            problem = check_status_url(entry.status_url, raw.callbacks.allow_private)
            if problem is not None:
                problems.append((f"{path}.status_url", problem))
        if entry.status_events is not None and entry.status_url is None:
            problems.append((f"{path}.status_events", "has no effect without status_url; set both"))
        if token is None:
            continue
        client = ApiClient(entry.status_url, entry.status_events, secret or token, entry.valid_for)
        add(token, client, path if entry.token is None else f"{path}.token", plain=False)
    if raw.http.api_tokens_file is not None:
        file_tokens = _read_secret_file(
            raw.http.api_tokens_file, "http.api_tokens_file", base, env, problems
        )
        lines = [
            line.strip()
            for line in (file_tokens or "").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        for number, line in enumerate(lines, start=1):
            token = SecretStr(line)
            if token_fingerprint(line) in first_seen:
                continue  # listed in the config too: the config's entry (and defaults) hold
            client = ApiClient(None, None, token, None)
            add(token, client, f"http.api_tokens_file (token {number})", plain=True)
    return tokens, clients


def _push_url_problems(server: Server, path: str, public_url: str | None) -> list[tuple[str, str]]:
    """Push URLs the SMS Server would cut (varchar(128)); checkable once goipd knows the URL
    the servers reach it at (http.public_url)."""
    urls = server.push_urls(public_url) if public_url else None
    longest = max((len(url) for url in urls or ()), default=0)
    if longest <= GOIP_PUSH_URL_MAX:
        return []
    return [
        (
            f"{path}.hook_token",
            f"the push URLs would be {longest} characters, but the SMS Server keeps at most "
            f"{GOIP_PUSH_URL_MAX} and cuts the rest, token included, without a word: use a "
            "shorter hook_token or http.public_url (`goipd push-urls` prints them)",
        )
    ]


def _resolve_providers(
    raw: ProvidersSettings, base: Path, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> tuple[CloudProviderConfig, ...]:
    resolved = []
    kinds: tuple[tuple[Literal["smsgo", "paasoo", "c123"], str], ...] = (
        ("smsgo", "password"),
        ("paasoo", "secret"),
        ("c123", "password"),
    )
    for name, secret_key in kinds:
        settings = getattr(raw, name)
        if settings is None:
            continue
        path = f"providers.{name}"
        secret = _secret(settings, secret_key, path, base, env, problems, required=True)
        hook = _secret(settings, "hook_token", path, base, env, problems, required=False)
        if secret is not None:
            resolved.append(CloudProviderConfig(name, settings, secret, hook))
    return tuple(resolved)


def _route_problems(raw: RawSettings, servers: Mapping[str, int]) -> list[tuple[str, str]]:
    problems = []
    for r_index, rule in enumerate(raw.routes):
        for t_index, target in enumerate(rule.via):
            path = f"routes[{r_index}].via[{t_index}]"
            if target.cloud is not None and getattr(raw.providers, target.cloud) is None:
                problems.append(
                    (
                        f"{path}.cloud",
                        f"provider {target.cloud} is not configured under providers.{target.cloud}",
                    )
                )
            if target.server is None or target.server == "*":
                continue
            if target.server not in servers:
                problems.append((f"{path}.server", f'no server named "{target.server}"'))
                continue
            server = raw.servers[servers[target.server]]
            if target.provider and server.groups and target.provider not in server.groups:
                problems.append(
                    (
                        f"{path}.provider",
                        f'server "{server.name}" has no group "{target.provider}" '
                        f"(groups: {', '.join(server.groups)})",
                    )
                )
    return problems


def _secret(
    model: BaseModel,
    key: str,
    path: str,
    base: Path,
    env: Mapping[str, str],
    problems: list[tuple[str, str]],
    *,
    required: bool,
) -> SecretStr | None:
    inline: SecretStr | None = getattr(model, key)
    env_name: str | None = getattr(model, f"{key}_env")
    file_name: str | None = getattr(model, f"{key}_file")
    given = [
        k
        for k, v in ((key, inline), (f"{key}_env", env_name), (f"{key}_file", file_name))
        if v is not None
    ]
    if len(given) > 1:
        problems.append((f"{path}.{given[1]}", f"give only one of {key} / {key}_env / {key}_file"))
        return None
    if not given:
        if required:
            problems.append(
                (f"{path}.{key}", f"required: set one of {key} / {key}_env / {key}_file")
            )
        return None
    if inline is not None:
        return inline
    if env_name is not None:
        value = env.get(env_name)
        if not value:
            problems.append((f"{path}.{key}_env", f"environment variable {env_name} is not set"))
            return None
        return SecretStr(value)
    assert file_name is not None
    content = _read_secret_file(file_name, f"{path}.{key}_file", base, env, problems)
    if content is None:
        return None
    value = content.strip()
    if not value:
        problems.append((f"{path}.{key}_file", f"file {file_name} is empty"))
        return None
    return SecretStr(value)


def _read_secret_file(
    name: str, path: str, base: Path, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> str | None:
    """Relative names are looked up in systemd's $CREDENTIALS_DIRECTORY first (LoadCredential=),
    then next to the config file."""
    candidate = Path(name)
    if not candidate.is_absolute():
        creds = env.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / candidate).exists():
            candidate = Path(creds) / candidate
        else:
            candidate = base / candidate
    try:
        return candidate.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append((path, f"file {candidate} does not exist"))
    except PermissionError:
        problems.append((path, f"file {candidate} is not readable by this user"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append((path, f"cannot read {candidate}: {exc.__class__.__name__}"))
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False
