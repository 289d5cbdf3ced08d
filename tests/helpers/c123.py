"""The c123 account the client and simulator tests use, and a client for it."""

from __future__ import annotations

import hashlib

from pydantic import SecretStr

from goipd.config import C123Settings
from goipd.upstream.c123 import C123Provider

UID = "9999"
PASSWORD = "pässword-c123"
PWD_MD5 = hashlib.md5(PASSWORD.encode()).hexdigest()

MOBILE = "+8613900008888"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_provider(
    url: str, password: str = PASSWORD, timeout: str = "2s", clock: Clock | None = None
) -> C123Provider:
    settings = C123Settings(uid=UID, password=SecretStr(password), url=url, timeout=timeout)
    return C123Provider(settings, SecretStr(password), clock=clock or Clock())
