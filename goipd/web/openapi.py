"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the handlers it describes (api.py); a test checks that every route the
application registers under /api/v1 is documented here and the other way round.
"""

from __future__ import annotations

from typing import Any

from goipd import __version__

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_STATES = ["queued", "submitted", "sent", "delivered", "failed", "cancelled", "expired"]
_EVENTS = [state for state in _STATES if state != "queued"]
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_LINE_PARAMETERS = [
    {"name": "server", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "line", "in": "path", "required": True, "schema": {"type": "string"}},
]
_ACTION_RESPONSES = {
    "200": _json(_ref("ActionResult"), "Done; `detail` is the SMS Server's answer"),
    "401": _PROBLEM,
    "404": _PROBLEM,
    "409": _PROBLEM,
    "422": _PROBLEM,
    "502": _json(_ref("ActionResult"), "The SMS Server or the GoIP refused or did not answer"),
    "503": _PROBLEM,
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
        "/api/v1/lines/{server}/{line}/quarantine": {
            "parameters": [
                {"name": "server", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "line", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "put": {
                "summary": "Quarantine a line by hand: routing avoids it until it is released",
                "description": (
                    "Stored in the ledger, so it survives restarts; no expiry. A line the server "
                    "does not report right now may be named (letters, digits and _.:-, at most "
                    "32 characters): the quarantine applies as soon as it appears. Repeating it "
                    "changes the reason and keeps `since`."
                ),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("QuarantineRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Quarantine"), "The line is quarantined"),
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
                    "200": _json(_ref("Quarantine"), "Released; `released` says what ended"),
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
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RebootRequest")}},
                },
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
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("UssdRequest")}},
                },
                "responses": _ACTION_RESPONSES,
            },
        },
        "/api/v1/lines/{server}/{line}/balance": {
            "parameters": _LINE_PARAMETERS,
            "post": {
                "summary": "Read the line's prepaid balance now, with its balance check",
                "description": "502 with the balance (its `error` set) when the read failed.",
                "responses": {
                    "200": _json(_ref("Balance"), "The balance read"),
                    "401": _PROBLEM,
                    "404": _PROBLEM,
                    "422": _PROBLEM,
                    "502": _json(_ref("Balance"), "The read failed; the last good balance"),
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
                    "200": _json(_ref("Status"), "The overview"),
                    "401": _PROBLEM,
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
        "/api/v1/alertmanager": {
            "post": {
                "summary": "Alertmanager webhook receiver: one SMS per notification",
                "description": (
                    "Alertmanager's webhook payload (version 4). The notification is rendered as "
                    "one short SMS and sent to the numbers of the receiver named in `receiver` "
                    "(alerting.receivers), unless the same groupKey and status was sent within "
                    "alerting.dedup_window; numbers over alerting.rate_limit get nothing."
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("AlertmanagerNotification")}},
                },
                "responses": {
                    "200": _json(_ref("AlertmanagerResult"), "Sent, deduplicated or rate limited"),
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
                    "priority": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 3,
                        "default": 1,
                        "description": "0 bulk, 1 normal, 2 high, 3 urgent: due recipients of "
                        "a higher priority are dispatched first; within one, first in first out",
                    },
                    "expires_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "a recipient not handed to an upstream by then becomes "
                        "expired and is never sent (after send_at; not with valid_for)",
                    },
                    "valid_for": {
                        "type": "string",
                        "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$",
                        "examples": ["5m"],
                        "description": "validity from send_at (or now), 10s to 30d; the API "
                        "token's default applies when neither this nor expires_at is given",
                    },
                    "status_url": {
                        "type": "string",
                        "format": "uri",
                        "maxLength": 2048,
                        "description": "http(s) URL goipd POSTs signed recipient state changes "
                        "to (docs/status-callbacks.md); the API token's default applies when "
                        "absent",
                    },
                    "status_events": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "enum": _EVENTS},
                        "description": "the states to report (default: sent, delivered, "
                        "failed, cancelled, expired)",
                    },
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
                    "priority": {"type": "integer", "minimum": 0, "maximum": 3},
                    "expires_at": _TIME,
                    "status_url": {
                        "type": ["string", "null"],
                        "description": "its query, if any, is shown as ?...",
                    },
                    "status_events": {
                        "type": ["array", "null"],
                        "items": {"type": "string", "enum": _EVENTS},
                    },
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
            "AlertmanagerAlert": {
                "type": "object",
                "required": ["status", "labels"],
                "properties": {
                    "status": {"type": "string", "enum": ["firing", "resolved"]},
                    "labels": _STRINGS,
                    "annotations": _STRINGS,
                    "startsAt": {"type": "string", "format": "date-time"},
                    "endsAt": {"type": "string", "format": "date-time"},
                    "generatorURL": {"type": "string"},
                    "fingerprint": {"type": "string"},
                },
            },
            "AlertmanagerNotification": {
                "type": "object",
                "required": ["version", "receiver", "status", "groupKey", "alerts"],
                "properties": {
                    "version": {"type": "string", "enum": ["4"]},
                    "receiver": {"type": "string", "minLength": 1},
                    "status": {"type": "string", "enum": ["firing", "resolved"]},
                    "groupKey": {"type": "string"},
                    "truncatedAlerts": {"type": "integer", "minimum": 0},
                    "alerts": {
                        "type": "array",
                        "minItems": 1,
                        "items": _ref("AlertmanagerAlert"),
                    },
                    "groupLabels": _STRINGS,
                    "commonLabels": _STRINGS,
                    "commonAnnotations": _STRINGS,
                    "externalURL": {"type": "string"},
                },
            },
            "AlertmanagerResult": {
                "type": "object",
                "required": ["receiver", "status", "outcome", "message_id", "recipients"],
                "properties": {
                    "receiver": {"type": "string"},
                    "status": {"type": "string", "enum": ["firing", "resolved"]},
                    "outcome": {
                        "type": "string",
                        "enum": ["sent", "deduplicated", "rate_limited"],
                    },
                    "message_id": {"type": ["string", "null"]},
                    "duplicate_of": {"type": ["string", "null"]},
                    "recipients": {
                        "type": "object",
                        "description": "number → sent, deduplicated or rate_limited",
                        "additionalProperties": {
                            "type": "string",
                            "enum": ["sent", "deduplicated", "rate_limited"],
                        },
                    },
                },
            },
            "ManualQuarantine": {
                "type": ["object", "null"],
                "required": ["reason", "since"],
                "properties": {
                    "reason": {"type": ["string", "null"]},
                    "since": {"type": "number", "description": "Unix time"},
                },
            },
            "QuarantineRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"reason": {"type": ["string", "null"], "maxLength": 200}},
            },
            "Quarantine": {
                "type": "object",
                "required": ["server", "line", "reported", "quarantined", "manual_quarantine"],
                "properties": {
                    "server": {"type": "string"},
                    "line": {"type": "string"},
                    "reported": {
                        "type": "boolean",
                        "description": "the server reports this line now",
                    },
                    "quarantined": {"type": "boolean"},
                    "manual_quarantine": _ref("ManualQuarantine"),
                    "released": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["manual", "errors"]},
                    },
                },
            },
            "Status": {
                "type": "object",
                "required": ["time", "servers", "queue", "providers", "manual_quarantines"],
                "properties": {
                    "time": {"type": "number", "description": "Unix time of the answer"},
                    "servers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "server": {"type": "string"},
                                "up": {"type": "boolean"},
                                "polled": {"type": "boolean"},
                                "last_poll": {"type": ["number", "null"]},
                                "last_success": {"type": ["number", "null"]},
                                "last_error": {"type": ["string", "null"]},
                                "last_error_reason": {"type": ["string", "null"]},
                                "consecutive_failures": {"type": "integer"},
                                "stalled": {
                                    "type": "boolean",
                                    "description": (
                                        "the server's engine does not send (sends stay "
                                        "unsend): routing leaves it alone until they move on"
                                    ),
                                },
                                "stalled_since": {"type": ["number", "null"]},
                                "stall_detail": {"type": ["string", "null"]},
                                "lines": {"type": "integer"},
                                "setup_problems": {
                                    "type": "array",
                                    "description": (
                                        "what the server's replies show about its setup (a "
                                        "PHP warning before the JSON), with the fix"
                                    ),
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "problem": {
                                                "type": "string",
                                                "enum": ["php_mbstring_missing", "php_warning"],
                                            },
                                            "warning": {"type": "string"},
                                            "fix": {"type": "string"},
                                        },
                                    },
                                },
                                "counts": {
                                    "type": "object",
                                    "description": (
                                        "lines by state, plus quarantined and healthy tallies"
                                    ),
                                    "additionalProperties": {"type": "integer"},
                                },
                            },
                        },
                    },
                    "queue": {
                        "type": "object",
                        "properties": {
                            **{state: {"type": "integer"} for state in _STATES},
                            "oldest_age_seconds": {"type": "number"},
                        },
                    },
                    "providers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "provider": {"type": "string"},
                                "enabled": {"type": "boolean"},
                                "balance": {"type": ["number", "null"]},
                            },
                        },
                    },
                    "manual_quarantines": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "server": {"type": "string"},
                                "line": {"type": "string"},
                                "reported": {"type": "boolean"},
                                "reason": {"type": ["string", "null"]},
                                "since": {"type": "number"},
                            },
                        },
                    },
                },
            },
            "Lines": {
                "type": "object",
                "properties": {
                    "servers": {"type": "array", "items": {"type": "object"}},
                    "lines": {"type": "array", "items": _ref("Line")},
                },
            },
            "Line": {
                "type": "object",
                "description": "One line; only the fields of SIM operations are detailed here.",
                "properties": {
                    "server": {"type": "string"},
                    "line": {"type": "string"},
                    "balance": {"oneOf": [_ref("Balance"), {"type": "null"}]},
                    "remediation": {
                        "type": ["object", "null"],
                        "description": "The line's latest self-healing of the last 7 days",
                        "properties": {
                            "incident": {"type": "string", "enum": ["unregistered", "quarantined"]},
                            "incident_since": {"type": "number"},
                            "action": {"type": "string"},
                            "started_at": {"type": "number"},
                            "result": {
                                "type": "string",
                                "enum": ["pending", "recovered", "failed", "refused"],
                            },
                            "finished_at": {"type": ["number", "null"]},
                            "detail": {"type": ["string", "null"]},
                        },
                    },
                    "device": {"oneOf": [_ref("LineDevice"), {"type": "null"}]},
                },
            },
            "LineDevice": {
                "type": "object",
                "description": (
                    "What the line's GoIP device port shows (servers[].devices); null on a "
                    "line no device is configured for. Read by the instance polling the "
                    "server: readings are null until its first poll of the device."
                ),
                "properties": {
                    "device": {"type": "string"},
                    "port": {"type": "integer", "minimum": 1, "maximum": 32},
                    "signal_dbm": {
                        "type": ["integer", "null"],
                        "description": "2 x CSQ - 113; null when the CSQ is 99 (unknown)",
                    },
                    "csq": {"type": ["integer", "null"], "minimum": 0, "maximum": 31},
                    "operator": {"type": ["string", "null"]},
                    "sim_present": {"type": ["boolean", "null"]},
                    "module_on": {"type": ["boolean", "null"]},
                    "gsm_registered": {"type": ["boolean", "null"]},
                    "seen_at": {
                        "type": ["number", "null"],
                        "description": "when the device last showed this port",
                    },
                    "stale": {
                        "type": "boolean",
                        "description": "the readings are older than 3 poll intervals",
                    },
                    "error": {
                        "type": ["object", "null"],
                        "description": "why the device's latest poll failed",
                        "properties": {
                            "reason": {"type": "string"},
                            "detail": {"type": "string"},
                            "at": {"type": "number"},
                            "last_ok": {"type": ["number", "null"]},
                        },
                    },
                },
            },
            "Balance": {
                "type": "object",
                "properties": {
                    "value": {"type": ["number", "null"]},
                    "read_at": {"type": ["number", "null"]},
                    "answer": {"type": ["string", "null"], "description": "the carrier's words"},
                    "low": {"type": ["number", "null"]},
                    "is_low": {"type": "boolean"},
                    "error": {
                        "type": ["object", "null"],
                        "properties": {
                            "reason": {"type": "string"},
                            "detail": {"type": "string"},
                            "at": {"type": "number"},
                        },
                    },
                },
            },
            "RebootRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"device": {"type": "boolean", "default": False}},
            },
            "UssdRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code"],
                "properties": {"code": {"type": "string", "pattern": "^[0-9*#+]{1,64}$"}},
            },
            "ActionResult": {
                "type": "object",
                "properties": {
                    "server": {"type": "string"},
                    "line": {"type": "string"},
                    "action": {
                        "type": "string",
                        "enum": ["reboot_module", "reboot_device", "ussd"],
                    },
                    "ok": {"type": "boolean"},
                    "detail": {"type": "string", "description": "the answer, or why it failed"},
                    "seconds": {"type": "number"},
                },
            },
        },
    },
}
