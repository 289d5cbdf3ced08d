"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

The schemas of the request bodies are generated from the models that validate them
(accept/requests.py, web/line_requests.py), and those of the answers from the documents the
handlers answer with (web/documents.py): what is checked, what is answered and what is
documented are said once. Written here by hand is only what no model says: the paths, their
parameters, the answers each route gives and what they mean, and the security scheme. A test
checks that every route the application registers under /api/v1 is documented here and the
other way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from goipd import __version__
from goipd.accept.requests import AlertmanagerRequest, MessageRequest
from goipd.fleet.registry import LineState
from goipd.model import PUBLIC_STATES
from goipd.web import documents
from goipd.web.line_requests import BalanceRequest, QuarantineRequest, RebootRequest, UssdRequest

_SCHEMAS = "#/components/schemas/"
_PROBLEM = {"$ref": "#/components/responses/Problem"}
_RENAMED = {"RouteTarget": "Route"}
"""Models the document names otherwise than their code does (the config's route is a Route)."""
_REFERENCED: dict[str, Any] = {}
"""The models the paths name, by their name in the document: the components are theirs."""


def _name(model: Any) -> str:
    config = getattr(model, "model_config", None) or getattr(model, "__pydantic_config__", {})
    name: str = config.get("title") or model.__name__
    return _RENAMED.get(name, name)


def _ref(model: Any) -> dict[str, str]:
    name = _name(model)
    _REFERENCED[name] = model
    return {"$ref": _SCHEMAS + name}


def _body(model: Any, *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


def _json(model: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


class _DocumentSchema(GenerateJsonSchema):
    """JSON Schema as an API document shows it: no generated title on every property, and a
    nullable scalar as `"type": [..., "null"]`."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        kind = inner.get("type")
        if kind == "null":
            return inner
        # An enum or a $ref would not admit null by a widened type: those stay a union.
        if isinstance(kind, str) and not {"enum", "const", "$ref"} & set(inner):
            return {**inner, "type": [kind, "null"]}
        return {"anyOf": [inner, {"type": "null"}]}


def _components(models: Iterable[Any]) -> dict[str, Any]:
    """The JSON Schemas of `models` and of every model they contain, by their document names."""
    # One schema of them all, so that a model two of them contain is one component.
    every: Any = tuple.__class_getitem__(tuple(models))
    generated = TypeAdapter(every).json_schema(
        ref_template=_SCHEMAS + "{model}", schema_generator=_DocumentSchema
    )
    definitions: dict[str, Any] = generated["$defs"]
    names = {
        key: _RENAMED.get(schema["title"], schema["title"]) for key, schema in definitions.items()
    }
    if len(set(names.values())) != len(names):
        raise ValueError(f"two schemas share a title: {sorted(names.values())}")
    refs = {_SCHEMAS + key: _SCHEMAS + name for key, name in names.items()}
    return {
        names[key]: _renamed(schema, refs) | {"title": names[key]}
        for key, schema in sorted(definitions.items(), key=lambda item: names[item[0]])
    }


def _renamed(schema: Any, refs: dict[str, str]) -> Any:
    if isinstance(schema, dict):
        return {
            key: refs.get(value, value) if key == "$ref" else _renamed(value, refs)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_renamed(item, refs) for item in schema]
    return schema


_LINE_PARAMETERS = [
    {"name": "server", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "line", "in": "path", "required": True, "schema": {"type": "string"}},
]
_ACTION_RESPONSES = {
    "200": _json(documents.ActionResultDocument, "Done; `detail` is the SMS Server's answer"),
    "401": _PROBLEM,
    "404": _PROBLEM,
    "409": _PROBLEM,
    "422": _PROBLEM,
    "502": _json(
        documents.ActionResultDocument, "The SMS Server or the GoIP refused or did not answer"
    ),
    "503": _PROBLEM,
}
_PROBLEM_RESPONSE = {
    "description": "RFC 9457 problem document",
    "content": {"application/problem+json": {"schema": _ref(documents.ProblemDocument)}},
}
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
                        "schema": {"type": "string", "enum": [s.value for s in LineState]},
                    },
                    {
                        "name": "healthy",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {
                    "200": _json(documents.LinesDocument, "Lines and servers"),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                },
            }
        },
        "/api/v1/lines/{server}/{line}/quarantine": {
            "parameters": _LINE_PARAMETERS,
            "put": {
                "summary": "Quarantine a line by hand: routing avoids it until it is released",
                "description": (
                    "Stored in the ledger, so it survives restarts; no expiry. A line the server "
                    "does not report right now may be named (letters, digits and _.:-, at most "
                    "32 characters): the quarantine applies as soon as it appears. Repeating it "
                    "changes the reason and keeps `since`."
                ),
                "requestBody": _body(QuarantineRequest, required=False),
                "responses": {
                    "200": _json(documents.QuarantineDocument, "The line is quarantined"),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "413": _PROBLEM,
                    "422": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
            "delete": {
                "summary": "Release a line: its manual quarantine and any after line errors",
                "responses": {
                    "200": _json(
                        documents.QuarantineDocument, "Released; `released` says what ended"
                    ),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
        },
        "/api/v1/lines/{server}/{line}/reboot": {
            "parameters": _LINE_PARAMETERS,
            "post": {
                "summary": "Reboot the line's GSM module, or the GoIP device it is on",
                "description": (
                    "Through the SMS Server's api.php (svr_reboot_module, svr_reboot_dev). "
                    "Refused with 409 while another action on the line runs (on any instance "
                    "sharing the ledger). Logged with the API token's fingerprint and counted "
                    "in goipd_line_actions_total."
                ),
                "requestBody": _body(RebootRequest, required=False),
                "responses": _ACTION_RESPONSES,
            },
        },
        "/api/v1/lines/{server}/{line}/ussd": {
            "parameters": _LINE_PARAMETERS,
            "post": {
                "summary": "Send a USSD code on the line; the answer is the carrier's reply",
                "description": (
                    "Through the SMS Server's en/ussd.php; may take up to "
                    "balances.answer_timeout (130 s). One USSD session per SMS Server at a time."
                ),
                "requestBody": _body(UssdRequest, required=True),
                "responses": _ACTION_RESPONSES,
            },
        },
        "/api/v1/lines/{server}/{line}/balance": {
            "parameters": _LINE_PARAMETERS,
            "post": {
                "summary": "Read the line's prepaid balance now, with its balance check",
                "description": "502 with the balance (its `error` set) when the read failed.",
                "requestBody": _body(BalanceRequest, required=False),
                "responses": {
                    "200": _json(documents.BalanceDocument, "The balance read"),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "422": _PROBLEM,
                    "502": _json(
                        documents.BalanceDocument, "The read failed; the last good balance"
                    ),
                    "503": _PROBLEM,
                },
            },
        },
        "/api/v1/status": {
            "get": {
                "summary": "Fleet overview for the status page",
                "description": (
                    "Servers with their line counts, queue depth and oldest waiting recipient, "
                    "cloud provider balances and every stored manual quarantine. Queue and "
                    "provider figures are those of /metrics, refreshed every few seconds."
                ),
                "responses": {
                    "200": _json(documents.StatusDocument, "The overview"),
                    "401": _PROBLEM,
                },
            }
        },
        "/api/v1/messages": {
            "post": {
                "summary": "Accept an SMS for one or more recipients",
                "requestBody": _body(MessageRequest, required=True),
                "responses": {
                    "202": _json(documents.MessageDocument, "Stored durably, will be sent"),
                    "200": _json(
                        documents.MessageDocument,
                        "Repeat of an idempotency_key: the original message",
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
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(PUBLIC_STATES)},
                    },
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
                    "200": _json(documents.MessagePage, "A page of messages"),
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
                    "200": _json(documents.MessageDocument, "The message"),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                },
            },
            "delete": {
                "summary": "Cancel recipients still queued (scheduled sends included)",
                "responses": {
                    "200": _json(documents.MessageDocument, "The message after cancelling"),
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
                    "200": _json(documents.InboundPage, "A page of inbound SMS"),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                },
            }
        },
        "/api/v1/alertmanager": {
            "post": {
                "summary": "Alertmanager webhook receiver: one SMS per notification",
                "description": (
                    "Alertmanager's webhook payload (version 4). The notification is rendered as "
                    "one short SMS and sent to the numbers of the receiver named in `receiver` "
                    "(alerting.receivers), unless the same groupKey and status was sent within "
                    "alerting.dedup_window; numbers over alerting.rate_limit get nothing."
                ),
                "requestBody": _body(AlertmanagerRequest, required=True),
                "responses": {
                    "200": _json(
                        documents.AlertmanagerResult, "Sent, deduplicated or rate limited"
                    ),
                    "400": _PROBLEM,
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "413": _PROBLEM,
                    "503": _PROBLEM,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Problem": _PROBLEM_RESPONSE},
        "schemas": _components(_REFERENCED.values()),
    },
}
