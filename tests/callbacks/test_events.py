"""The JSON of a status event: stable id, type, the recipient's route, error, RFC 3339 time,
attempt; compact bytes in a fixed order (what is signed)."""

from __future__ import annotations

import json

from goipd.callbacks.events import DEFAULT_EVENTS, EVENT_STATES, event_body, event_payload, rfc3339
from goipd.ledger.events import StatusEvent


def _event(**changes: object) -> StatusEvent:
    fields: dict[str, object] = {
        "id": 42,
        "recipient_id": 7,
        "message_id": "01JABCDEF",
        "url": "https://hooks.example/s?token=t",
        "receiver": "https://hooks.example",
        "client": "a1b2c3d4e5f6",
        "state": "delivered",
        "number": "+886912345678",
        "route": "goip",
        "server": "taipei",
        "line": "3",
        "error_code": None,
        "error_meaning": None,
        "at": 1_800_000_000.1234,
        "attempts": 0,
    }
    fields.update(changes)
    return StatusEvent(**fields)  # type: ignore[arg-type]


def test_the_states_and_the_default_set() -> None:
    assert EVENT_STATES == ("submitted", "sent", "delivered", "failed", "cancelled", "expired")
    assert DEFAULT_EVENTS == ("sent", "delivered", "failed", "cancelled", "expired")


def test_a_goip_event() -> None:
    assert event_payload(_event()) == {
        "id": "evt_42",
        "type": "recipient.delivered",
        "message_id": "01JABCDEF",
        "to": "+886912345678",
        "state": "delivered",
        "route": "goip",
        "server": "taipei",
        "line": "3",
        "provider": None,
        "error": None,
        "at": "2027-01-15T08:00:00.123Z",
        "attempt": 1,
    }


def test_a_failed_cloud_event_on_its_third_attempt() -> None:
    payload = event_payload(
        _event(
            route="smsgo",
            server=None,
            line=None,
            state="failed",
            error_code="UNDELIV",
            error_meaning="not delivered",
            attempts=2,
        )
    )
    assert payload["provider"] == "smsgo"
    assert payload["type"] == "recipient.failed"
    assert payload["error"] == {"code": "UNDELIV", "meaning": "not delivered"}
    assert payload["attempt"] == 3


def test_the_body_is_compact_json_of_the_payload_and_never_the_url() -> None:
    body = event_body(_event())
    assert json.loads(body) == event_payload(_event())
    assert b" " not in body.replace(b"not delivered", b"")
    assert b"token" not in body
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
