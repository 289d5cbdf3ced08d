"""The OpenAPI document lists exactly the routes the API registers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from goipd.web import routes


async def test_openapi_documents_every_api_route(base: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base}/api/v1/openapi.json") as resp:
        document = await resp.json()
    assert document["openapi"].startswith("3.1")
    app = web.Application()
    routes.add_routes(app)
    registered = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and route.resource.canonical != "/api/v1/openapi.json"
    }
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == registered
