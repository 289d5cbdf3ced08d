"""The API's routes under /api/v1."""

from __future__ import annotations

from aiohttp import web

from goipd.web import openapi
from goipd.web.alertmanager import post_alertmanager
from goipd.web.inbound import list_inbound
from goipd.web.lines import (
    delete_quarantine,
    get_lines,
    get_status,
    post_balance,
    post_reboot,
    post_ussd,
    put_quarantine,
)
from goipd.web.messages import delete_message, get_message, list_messages, post_message
from goipd.web.replies import json_reply


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/lines", get_lines)
    app.router.add_get("/api/v1/status", get_status)
    app.router.add_put("/api/v1/lines/{server}/{line}/quarantine", put_quarantine)
    app.router.add_delete("/api/v1/lines/{server}/{line}/quarantine", delete_quarantine)
    app.router.add_post("/api/v1/lines/{server}/{line}/reboot", post_reboot)
    app.router.add_post("/api/v1/lines/{server}/{line}/ussd", post_ussd)
    app.router.add_post("/api/v1/lines/{server}/{line}/balance", post_balance)
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_get("/api/v1/messages", list_messages)
    app.router.add_get("/api/v1/messages/{id}", get_message)
    app.router.add_delete("/api/v1/messages/{id}", delete_message)
    app.router.add_get("/api/v1/inbound", list_inbound)
    app.router.add_post("/api/v1/alertmanager", post_alertmanager)
    app.router.add_get("/api/v1/openapi.json", get_openapi)


async def get_openapi(_request: web.Request) -> web.Response:
    return json_reply(openapi.DOCUMENT)
