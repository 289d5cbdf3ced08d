"""Status callback signatures, like Stripe's webhooks: the header

    Goipd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

signs the exact body bytes together with the time, so a receiver that checks the time too
refuses a captured request replayed later. The secret is the API client's signing_secret
(default: its API token). `verify` is what a receiver runs (docs/status-callbacks.md)."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Goipd-Signature"
EVENT_ID_HEADER = "Goipd-Event-Id"
DEFAULT_TOLERANCE = 300.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: str, body: bytes, now: float) -> str:
    """The Goipd-Signature header value for `body` sent at `now`."""
    timestamp = int(now)
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if `header` (Goipd-Signature) signs `body` with `secret`, at a time within
    `tolerance` seconds of `now`. Any v1 may match (several appear while a secret is
    rotated); the comparison takes constant time."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
