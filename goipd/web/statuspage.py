"""The live status page: `GET /` serves a static HTML shell that holds no data; the page's own
script reads everything from /api/v1/* (status, lines, failed messages) with the operator's
bearer token, so the page is exactly as protected as the API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Page:
    html: str
    csp: str


def load_page() -> Page:
    html = resources.files("goipd").joinpath("web/status.html").read_text(encoding="utf-8")
    # Inline code runs only by its hash: nothing injected into the page could run or restyle it.
    hashes = {
        kind: " ".join(_sha256(body) for body in re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.S))
        for kind in ("script", "style")
    }
    csp = (
        f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return Page(html, csp)


def _sha256(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"'sha256-{digest}'"


PAGE_KEY = web.AppKey("status_page", Page)


async def get_page(request: web.Request) -> web.Response:
    page = request.app[PAGE_KEY]
    return web.Response(
        text=page.html,
        content_type="text/html",
        headers={
            "Content-Security-Policy": page.csp,
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(app: web.Application) -> None:
    app[PAGE_KEY] = load_page()
    app.router.add_get("/", get_page)
