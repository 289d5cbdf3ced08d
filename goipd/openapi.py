"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the handlers it describes (api.py); a test checks that every route the
application registers under /api/v1 is documented here and the other way round.
"""

from __future__ import annotations

from typing import Any

from goipd import __version__

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_STATES = ["queued", "submitted", "sent", "delivered", "failed", "cancelled"]
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "goipd API",
        "version": __version__,
        "description": "Send SMS through a fleet of GoIP gateways and watch its lines.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/lines": {
            "get": {
                "summary": "Every line of every SMS Server, with state, quotas and health",
                "parameters": [
                    {"name": "server", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": [
                                "gone",
                                "offline",
                                "logged_out",
                                "quota_exhausted",
                                "registered",
                            ],
                        },
                    },
                    {
                        "name": "healthy",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {
                    "200": _json(_ref("Lines"), "Lines and servers"),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                },
            }
        },
        "/api/v1/messages": {
            "post": {
                "summary": "Accept an SMS for one or more recipients",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewMessage")}},
                },
                "responses": {
                    "202": _json(_ref("Message"), "Stored durably, will be sent"),
                    "200": _json(
                        _ref("Message"), "Repeat of an idempotency_key: the original message"
                    ),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "409": _PROBLEM,
                    "413": _PROBLEM,
                    "422": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
            "get": {
                "summary": "Messages, newest first",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": _STATES}},
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "messages": {"type": "array", "items": _ref("Message")},
                                "next": {"type": ["string", "null"]},
                            },
                        },
                        "A page of messages",
                    ),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "422": _PROBLEM,
                },
            },
        },
        "/api/v1/messages/{id}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "One message with per-recipient state",
                "responses": {
                    "200": _json(_ref("Message"), "The message"),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                },
            },
            "delete": {
                "summary": "Cancel recipients still queued (scheduled sends included)",
                "responses": {
                    "200": _json(_ref("Message"), "The message after cancelling"),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "409": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
        },
        "/api/v1/inbound": {
            "get": {
                "summary": "Received SMS, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "inbound": {"type": "array", "items": _ref("Inbound")},
                                "next": {"type": ["string", "null"]},
                            },
                        },
                        "A page of inbound SMS",
                    ),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Problem": {
                "description": "RFC 9457 problem document",
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
            }
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                },
            },
            "Route": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "server": {"type": "string", "description": 'server name or "*"'},
                    "provider": {"type": "string", "description": "carrier group"},
                    "line": {"type": "string", "description": "goip_line"},
                    "cloud": {"type": "string", "enum": ["smsgo", "paasoo", "c123"]},
                },
            },
            "NewMessage": {
                "type": "object",
                "additionalProperties": False,
                "required": ["to", "text"],
                "properties": {
                    "to": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        ]
                    },
                    "text": {"type": "string", "minLength": 1},
                    "route": _ref("Route"),
                    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128},
                    "send_at": {"type": "string", "format": "date-time"},
                },
            },
            "Recipient": {
                "type": "object",
                "properties": {
                    "to": {"type": "string"},
                    "state": {"type": "string", "enum": _STATES},
                    "attempts": {"type": "integer"},
                    "route": {"type": ["string", "null"]},
                    "server": {"type": ["string", "null"]},
                    "line": {"type": ["string", "null"]},
                    "task_id": {"type": ["string", "null"]},
                    "upstream_id": {"type": ["string", "null"]},
                    "error": {
                        "type": ["object", "null"],
                        "properties": {"code": {"type": "string"}, "meaning": {"type": "string"}},
                    },
                    "created_at": _TIME,
                    "updated_at": _TIME,
                    "submitted_at": _TIME,
                    "sent_at": _TIME,
                    "delivered_at": _TIME,
                },
            },
            "Message": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "created_at": _TIME,
                    "text": {"type": "string"},
                    "segments": {"type": "integer"},
                    "encoding": {"type": "string", "enum": ["GSM-7", "UCS-2"]},
                    "route": {"oneOf": [_ref("Route"), {"type": "null"}]},
                    "send_at": _TIME,
                    "idempotency_key": {"type": ["string", "null"]},
                    "recipients": {"type": "array", "items": _ref("Recipient")},
                },
            },
            "Inbound": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "source": {"type": "string"},
                    "line": {"type": ["string", "null"]},
                    "from": {"type": "string"},
                    "to": {"type": ["string", "null"]},
                    "text": {"type": "string"},
                    "received_at": _TIME,
                    "upstream_time": {"type": "string"},
                },
            },
            "Lines": {
                "type": "object",
                "properties": {
                    "servers": {"type": "array", "items": {"type": "object"}},
                    "lines": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}
