"""Small helpers around aiohttp sites shared by the daemon and the simulators."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def bound_port(site: web.TCPSite) -> int:
    """The port a site actually listens on (needed when it was started with port 0)."""
    server: Any = site._server  # aiohttp exposes no public accessor for the bound socket
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0
