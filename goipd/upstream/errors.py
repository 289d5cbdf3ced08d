"""The one error type every upstream client raises, with a bounded set of reasons.

The reason is a metric label (`goipd_server_poll_errors_total{reason}`), so the set is closed.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorReason(StrEnum):
    TIMEOUT = "timeout"
    CONNECT = "connect"
    """No connection: the request was never written, so the upstream did nothing."""
    DISCONNECTED = "disconnected"
    """The connection was lost after the request was written: the upstream may have acted."""
    HTTP_STATUS = "http_status"
    AUTH = "auth"
    PARSE = "parse"
    SERVER_DATABASE = "server_database"
    """The GoIP SMS Server's database refused the request (`Bad query`, `Could not connect`):
    nothing was stored that will be sent."""
    INBOX_LOGIN = "inbox_login"
    """The SMS Server's web login refused goipd's credentials, or answered the login form again
    right after a successful login."""
    INBOX_LAYOUT = "inbox_layout"
    """The SMS Server's web inbox page is not one goipd can read: its HTML changed."""
    NO_RESPONSE = "no_response"
    """The SMS Server relayed the request (a USSD code, a remote command) but the line's GoIP
    never answered it (`ERROR term no response`, `ERROR:time out`)."""
    DEVICE_ERROR = "device_error"
    """The line's GoIP, or the carrier through it, answered a relayed request with an error
    (`ERROR USSD send failed!`, a command's `ERROR:...`)."""
    UNKNOWN_LINE = "unknown_line"
    """The SMS Server has no line by the name goipd asked about."""
    ENGINE_DOWN = "engine_down"
    """The SMS Server's engine (goipcron) did not take a request to relay: it is not running."""
    BALANCE_UNREADABLE = "balance_unreadable"
    """A USSD answer came, but the configured balance pattern does not read a balance in it."""


REASON_CODES = frozenset(reason.value for reason in ErrorReason)
"""A send result's code when the call had no usable answer (the reason, not a provider's own
code)."""


AMBIGUOUS_REASONS = frozenset({ErrorReason.TIMEOUT, ErrorReason.PARSE, ErrorReason.DISCONNECTED})
"""Failures after which the upstream may still have acted on the request (no answer in time,
an answer cut short or garbled, the connection lost after the request was written): a send
repeated after one of these may go out twice."""


class UpstreamError(Exception):
    """A failed exchange with an upstream API.

    `detail` is for logs and operators; it never contains credentials because clients build it
    from status codes and parser messages only, never from request URLs or bodies.
    """

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ParseError(ValueError):
    """A reply or push body that does not match the documented shape (pure parsers raise it)."""
