"""Bearer tokens on /api/*, and the short fingerprint that tells API clients apart."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from goipd.problem import Problem


def token_check(tokens: Callable[[], Sequence[SecretStr]]) -> Callable[[web.Request], None]:
    """Bearer-token check of an /api/ request, raising 401; `tokens` is read per request so a
    reload takes effect. No tokens configured: every request passes."""
    # The encoded tokens of the last token tuple seen: a reload brings a new tuple.
    cache: list[Any] = [None, ()]

    def check_token(request: web.Request) -> None:
        current = tokens()
        if current is not cache[0]:
            cache[:] = [current, tuple(t.get_secret_value().encode() for t in current)]
        encoded: tuple[bytes, ...] = cache[1]
        if not encoded:
            return
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

    return check_token


def client_id(request: web.Request) -> str:
    """A short fingerprint of the caller's token: enough to tell clients apart, useless to an
    attacker (the token itself is never stored)."""
    header = request.headers.get("Authorization", "")
    return _fingerprint(header.partition(" ")[2].strip())


@functools.lru_cache(maxsize=256)
def _fingerprint(token: str) -> str:
    # Cached: clients are few and a SHA-256 per request was 1.6% of an accept.
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""
