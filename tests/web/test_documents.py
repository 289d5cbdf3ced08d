"""What the handlers answer is what the OpenAPI document says they answer: every JSON answer
validates against its schema in the served document, closed (a field the document does not
declare fails), so the declared documents (goipd/web/documents.py) cannot drift from the
handlers' JSON."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import pytest

from goipd.fleet.actions import ActionResult
from goipd.fleet.devices import DeviceLine, DevicePoll
from goipd.fleet.registry import Line, LineRegistry, ManualQuarantine, ServerState
from goipd.ledger.upkeep import LineBalance, Remediation
from goipd.model import Message, Recipient, State
from goipd.web import lines as line_handlers
from goipd.web import openapi
from goipd.web.messages import message_json

jsonschema_rs = pytest.importorskip("jsonschema_rs")

NOW = 1_900_000_000.0


def _closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


COMPONENTS = _closed(copy.deepcopy(openapi.DOCUMENT["components"]))


def assert_documented(name: str, value: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": COMPONENTS}
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, (name, errors, value)


def _recipient(state: State, **changes: Any) -> Recipient:
    fields: dict[str, Any] = {
        "id": 1,
        "message_id": "M1",
        "number": "+886912345678",
        "state": state,
        "attempts": 0,
        "next_attempt_at": NOW,
        "route": None,
        "server": None,
        "line": None,
        "task_id": None,
        "upstream_id": None,
        "error_code": None,
        "error_meaning": None,
        "excluded_lines": (),
        "created_at": NOW,
        "updated_at": NOW,
        "submitted_at": None,
        "sent_at": None,
        "delivered_at": None,
    }
    return Recipient(**(fields | changes))


def test_a_message_is_answered_as_documented() -> None:
    message = Message(
        id="M1",
        text="hello",
        segments=1,
        encoding="GSM-7",
        route='{"server": "hq", "line": "G101"}',
        idempotency_key="k-1",
        send_at=NOW + 60,
        created_at=NOW,
        client="c",
        recipients=(
            _recipient(State.QUEUED),
            _recipient(State.DISPATCHING, route="goip", server="hq", line="G101"),
            _recipient(
                State.FAILED,
                route="goip",
                server="hq",
                line="G101",
                task_id="7",
                upstream_id="7.+886912345678",
                error_code="38",
                error_meaning="network out of order",
                submitted_at=NOW,
                sent_at=NOW,
            ),
        ),
        priority=3,
        expires_at=NOW + 600,
        status_url="https://app.example/h?key=s3cret",
        status_events="sent,failed",
    )
    assert_documented("Message", message_json(message))
    assert_documented("MessagePage", {"messages": [message_json(message)], "next": "M1"})


def _registry() -> LineRegistry:
    registry = LineRegistry(["hq"])
    line = Line(
        server="hq",
        line_id="G101",
        online=True,
        registered=True,
        reg_raw="LOGIN",
        remain_sms=None,
        day_remain_sms=20,
        first_seen=NOW - 100,
        last_change=NOW - 50,
        last_seen=NOW,
        quarantined_until=NOW + 60,
        quarantine_reason="3 line errors",
        manual_quarantine=ManualQuarantine("SIM swap", NOW - 10),
        last_error_code="38",
        last_error_at=NOW - 20,
    )
    server = ServerState(
        name="hq",
        up=True,
        polled=True,
        last_poll=NOW,
        last_success=NOW,
        lines={"G101": line},
        setup_problems={"php_mbstring_missing": "PHP Warning: mb_strlen()"},
    )
    registry.servers["hq"] = server
    registry.manual[("hq", "G101")] = ManualQuarantine("SIM swap", NOW - 10)
    key = ("hq", "G101")
    registry.balances[key] = LineBalance(
        "hq", "G101", 12.5, "Balance NT$12.50", NOW - 30, "no_response", "timed out", NOW
    )
    registry.balance_thresholds[key] = 50.0
    registry.remediations[key] = Remediation(
        "hq", "G101", NOW - 40, "unregistered", "reboot_module", "a", NOW - 30, "failed", NOW, "x"
    )
    registry.devices[key] = DeviceLine(
        server="hq",
        line="G101",
        device="goip-a",
        port=1,
        interval=30.0,
        poll=DevicePoll("goip-a", at=NOW, ok_at=NOW - 60, reason="timeout", detail="no answer"),
        csq=20,
        operator="Chunghwa",
        sim_present=True,
        module_on=True,
        gsm_registered=True,
        seen_at=NOW - 200,
    )
    return registry


def test_lines_and_quarantines_are_answered_as_documented() -> None:
    registry = _registry()
    server = registry.servers["hq"]
    line = server.lines["G101"]
    assert_documented(
        "Lines",
        {
            "servers": [line_handlers.server_json(server)],
            "lines": [line_handlers.line_json(line, NOW, registry)],
        },
    )
    bare = Line("hq", "G102", False, False, "LOGOUT", 0, 0, NOW, NOW, NOW)
    assert_documented("Line", line_handlers.line_json(bare, NOW))
    quarantine = line_handlers._quarantine_json(registry, "hq", "G101", NOW)
    assert_documented("Quarantine", quarantine)
    assert_documented("Quarantine", quarantine | {"released": ["manual", "errors"]})
    assert_documented(
        "Balance", line_handlers.balance_json(registry.balances[("hq", "G101")], None, ("x", "y"))
    )
    result = ActionResult("hq", "G101", "ussd", True, "Balance NT$12.50", 1.23456)
    assert_documented("ActionResult", line_handlers._action_json(result))


async def test_live_answers_are_documented(base: str, http: aiohttp.ClientSession) -> None:
    body = {"to": ["+886912345678", "+886912345679"], "text": "documented", "priority": 2}
    async with http.post(f"{base}/api/v1/messages", json=body) as resp:
        assert resp.status == 202
        created = await resp.json()
    assert_documented("Message", created)
    for path, name in (
        (f"/api/v1/messages/{created['id']}", "Message"),
        ("/api/v1/messages?limit=1", "MessagePage"),
        ("/api/v1/inbound", "InboundPage"),
        ("/api/v1/status", "Status"),
        ("/api/v1/lines", "Lines"),
    ):
        async with http.get(f"{base}{path}") as resp:
            assert resp.status == 200, path
            assert_documented(name, await resp.json())
    async with http.delete(f"{base}/api/v1/messages/{created['id']}") as resp:
        assert resp.status == 200
        assert_documented("Message", await resp.json())
    async with http.post(f"{base}/api/v1/messages", json={"to": 5}) as resp:
        assert resp.status == 422
        assert_documented("Problem", await resp.json(content_type=None))
