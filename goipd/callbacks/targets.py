"""Where status callbacks may go. The URL check runs at the API and on the config; the address
check runs at every delivery, on the addresses the connection is then made to, so a host name
that resolves to a private address (now, or only after it passed a check: DNS rebinding) is
refused (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from goipd.config import STATUS_URL_MAX, check_status_url, refused_address

__all__ = [
    "STATUS_URL_MAX",
    "CheckedResolver",
    "RefusedTarget",
    "check_status_url",
    "receiver_key",
    "refused_address",
]

GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class RefusedTarget(OSError):
    """A status URL's host resolved to an address callbacks may not reach."""


def receiver_key(url: str) -> str:
    """scheme://host[:port] as written, lower-cased: the same text the ledger's trigger stores
    (goipd/ledger/migrations.py 9), which back-off, caps and metrics go by. Never a path or a
    query: those may carry the caller's credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "?"
    for stop in "/?#":
        rest = rest.partition(stop)[0]
    return f"{scheme}://{rest}".lower()


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for status callbacks: every address a host name resolves to is
    checked, and the connection is made to exactly these (aiohttp does not resolve again).
    Literal IP hosts never reach a resolver: check_status_url judges those."""

    def __init__(
        self,
        allow_private: Callable[[], bool],
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._getaddrinfo = getaddrinfo

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        lookup = self._getaddrinfo or asyncio.get_running_loop().getaddrinfo
        infos = await lookup(host, port, type=socket.SOCK_STREAM, family=family)
        allow = self._allow_private()
        results: list[ResolveResult] = []
        for info_family, _, proto, _, sockaddr in infos:
            text = str(sockaddr[0]).partition("%")[0]
            if not allow:
                try:
                    problem = refused_address(ipaddress.ip_address(text))
                except ValueError:
                    problem = f"{text} is not an IP address"
                if problem is not None:
                    # One bad address refuses the host: which address a connection takes
                    # is not ours to pick, and a rebinding name mixes good and bad ones.
                    raise RefusedTarget(f"{host} resolves to {problem}")
            results.append(
                ResolveResult(
                    hostname=host,
                    host=text,
                    port=int(sockaddr[1]),
                    family=info_family,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        pass
