"""The declared request bodies: the OpenAPI document accepts exactly the bodies their models
accept (whatever either says, the other says too), and a refusal of the model names the field
the API always named, in the order it always checked them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from goipd.accept.requests import MESSAGE_REQUEST, AlertmanagerRequest, MessageRequest
from goipd.accept.validate import validate_message
from goipd.callbacks.events import EVENT_STATES
from goipd.config import ApiSettings
from goipd.problem import Problem
from goipd.web import openapi
from goipd.web.line_requests import QuarantineRequest, RebootRequest, UssdRequest

jsonschema_rs = pytest.importorskip("jsonschema_rs")

# No floats: JSON Schema counts 2.0 as an integer, and the API refuses it as a priority (a
# client sending 2.0 meant something else); the model is strict, the schema cannot say it.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def document_accepts(name: str) -> Callable[[Any], bool]:
    """Whether the served document's schema `name` admits a value."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": openapi.DOCUMENT["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
    return lambda value: bool(validator.is_valid(value))


def model_accepts(validate: Callable[[Any], Any]) -> Callable[[Any], bool]:
    """Whether the model admits a value as far as a JSON Schema can say: a route's rules on
    which of its fields go together are its own validator's, which no schema states."""

    def accepts(value: Any) -> bool:
        try:
            validate(value)
        except ValidationError as exc:
            return all(e["type"] == "value_error" for e in exc.errors())
        return True

    return accepts


@st.composite
def bodies(draw: st.DrawFn, base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> Any:
    """A valid `base` with some fields set to plausible values, good or bad (`fields`), now and
    then any JSON in one, an unknown field, a field left out, or no object at all."""
    body = {**base, **draw(st.fixed_dictionaries({}, optional=fields))}
    if draw(st.integers(0, 3)) == 0:
        body[draw(st.sampled_from(sorted(fields)))] = draw(JSON)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["colour", "To", ""]))] = draw(JSON)
    if body and draw(st.integers(0, 9)) == 0:
        body.pop(draw(st.sampled_from(sorted(body))))
    return draw(JSON) if draw(st.integers(0, 19)) == 0 else body


NUMBER = st.sampled_from(["+886912345678", "0912345678", "x" * 33, ""])
MESSAGE = {"to": "+886912345678", "text": "hello"}
MESSAGE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "to": NUMBER | st.lists(NUMBER, max_size=3),
    "text": st.text(max_size=5) | st.sampled_from(["", "a\x07", "a\nb\tc", "0", "x" * 300]),
    "idempotency_key": st.none() | st.text(max_size=3) | st.just("k" * 129),
    "send_at": st.none() | st.just("2030-01-01T00:00:00Z"),
    "status_url": st.none() | st.just("https://app.example/h") | st.just("h" * 2049),
    "status_events": st.none() | st.lists(st.sampled_from([*EVENT_STATES, "queued"]), max_size=3),
    "route": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "server": st.sampled_from(["hq", "*"]),
            "cloud": st.sampled_from(["smsgo", "nope"]),
            "line": st.just("G101"),
            "servr": st.just("x"),
        },
    ),
    "priority": st.none() | st.integers(-1, 4) | st.booleans(),
    "expires_at": st.none() | st.just("2030-01-01T00:00:00Z"),
    "valid_for": st.none()
    | st.sampled_from(["5m", "1h30m", "250ms", "1.5h", " 5m", "5", "5 m", "1e3s", "٥m"]),
}
ALERT = {"status": "firing", "labels": {"alertname": "GoipdSimDead"}}
ALERT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(["firing", "resolved", "pending"]),
    "labels": st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    "annotations": st.none()
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.none(), max_size=2),
    "startsAt": st.none() | st.just("2026-11-20T10:00:00Z"),
    "fingerprint": st.none() | st.text(max_size=4),
}
ALERTMANAGER = {
    "version": "4",
    "receiver": "oncall",
    "status": "firing",
    "groupKey": "{}",
    "alerts": [ALERT],
}
ALERTMANAGER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "version": st.sampled_from(["4", "3", 4]),
    "receiver": st.sampled_from(["oncall", ""]),
    "status": st.sampled_from(["firing", "resolved"]),
    "groupKey": st.text(max_size=4),
    "alerts": st.lists(bodies(ALERT, ALERT_FIELDS), max_size=2),
    "truncatedAlerts": st.none() | st.integers(-1, 3),
    "externalURL": st.none() | st.just("http://alertmanager:9093"),
    "commonLabels": st.none()
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.integers(), max_size=2),
}


def _validator(model: type[BaseModel]) -> Callable[[Any], Any]:
    return model.model_validate


CASES: list[tuple[str, Callable[[Any], Any], st.SearchStrategy[Any]]] = [
    ("NewMessage", MESSAGE_REQUEST.validate_python, bodies(MESSAGE, MESSAGE_FIELDS)),
    (
        "AlertmanagerNotification",
        _validator(AlertmanagerRequest),
        bodies(ALERTMANAGER, ALERTMANAGER_FIELDS),
    ),
    (
        "QuarantineRequest",
        _validator(QuarantineRequest),
        bodies({}, {"reason": st.none() | st.text(max_size=4) | st.just("r" * 201)}),
    ),
    ("RebootRequest", _validator(RebootRequest), bodies({}, {"device": st.booleans()})),
    (
        "UssdRequest",
        _validator(UssdRequest),
        bodies({"code": "*101#"}, {"code": st.sampled_from(["*101#", "*101#$", "", "1" * 65])}),
    ),
]


@pytest.mark.parametrize(("name", "validate", "generated"), CASES, ids=[c[0] for c in CASES])
def test_the_document_accepts_what_the_model_accepts(
    name: str, validate: Callable[[Any], Any], generated: st.SearchStrategy[Any]
) -> None:
    in_document = document_accepts(name)
    in_model = model_accepts(validate)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(generated)
    def agree(body: Any) -> None:
        assert in_document(body) == in_model(body), body

    agree()


def test_the_message_body_of_the_document_is_the_models_schema() -> None:
    """Byte for byte: the document does not describe the body, the model does."""
    operation = openapi.DOCUMENT["paths"]["/api/v1/messages"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/NewMessage"
    own = TypeAdapter(MessageRequest).json_schema(
        ref_template="#/components/schemas/{model}", schema_generator=openapi._DocumentSchema
    )
    own.pop("$defs")
    documented = openapi.DOCUMENT["components"]["schemas"]["NewMessage"]
    route = documented["properties"]["route"]
    assert route["anyOf"][0] == {"$ref": "#/components/schemas/Route"}
    own["properties"]["route"]["anyOf"][0] = route["anyOf"][0]
    assert documented == own
    assert set(documented["properties"]) == (
        MessageRequest.__required_keys__ | MessageRequest.__optional_keys__
    )


# --- refusals name the field the API always named -----------------------------------------------


@dataclass(frozen=True)
class Defaults:
    status_url: str | None = None
    status_events: tuple[str, ...] | None = None
    valid_for: float | None = None


@dataclass(frozen=True)
class Limits:
    settings: Callable[[], ApiSettings] = lambda: ApiSettings(max_recipients=3)
    server_names: Callable[[], Collection[str]] = lambda: {"hq"}
    cloud_names: Callable[[], Collection[str]] = lambda: set()
    caller_defaults: Callable[[str], Defaults | None] = lambda client: None
    private_callbacks: Callable[[], bool] = lambda: False


NOW = 1_900_000_000.0


def refusal(body: Any) -> str:
    with pytest.raises(Problem) as info:
        validate_message(body, Limits(), NOW)
    return info.value.detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # An unknown field is named before any other fault, the first of them in sorted order.
        (
            {"zz": 1, "aa": 2, "to": 5, "text": None},
            "unknown field 'aa'; allowed: expires_at, idempotency_key, priority, route, "
            "send_at, status_events, status_url, text, to, valid_for",
        ),
        # Then the fields in the order they were always checked.
        (
            {"to": [5], "text": None, "priority": "x"},
            "to[0]: expected a phone number as a string, got a number",
        ),
        (
            {"to": "+886912345678", "text": None, "priority": "x"},
            "text: expected a string, got null",
        ),
        (
            {"to": "+886912345678", "text": "x", "priority": "x", "route": 1},
            "route: expected an object, got a number",
        ),
        # `to` is judged whole before the others, its numbers' validity included.
        (
            {"to": "hello", "text": None, "priority": "x"},
            "to[0]: 'hello' is not a phone number",
        ),
        # Within `to`, the count before any number, and numbers in their order.
        (
            {"to": ["+886912345671"] * 3 + [5], "text": "x"},
            "to: at most 3 recipients per message, got 4",
        ),
        ({"to": ["hello", 5], "text": "x"}, "to[0]: 'hello' is not a phone number"),
        (
            {"to": ["+886912345678", "1" * 33], "text": "x"},
            "to[1]: a phone number has at most 32 characters",
        ),
        ({"to": "1" * 33, "text": "x"}, "to[0]: a phone number has at most 32 characters"),
        ({"to": {}, "text": "x"}, "to: expected a phone number or a non-empty array of them"),
        # Refusals of the model in the words of the checks behind it.
        (
            {"to": "+886912345678", "text": "x", "status_url": "h" * 2049},
            "status_url: must be at most 2048 characters, got 2049",
        ),
        (
            {"to": "+886912345678", "text": "x", "valid_for": " 5m"},
            'valid_for: expected a duration like "5m" or "90s"',
        ),
        (
            {"to": "+886912345678", "text": "x", "priority": 10**30},
            f"priority: expected an integer from 0 (bulk) to 3 (urgent), 1 being normal; got {str(10**30)[:40]}",
        ),
        (
            {"to": "+886912345678", "text": "x", "route": {"server": 5}},
            "route.server: Input should be a valid string",
        ),
        (
            {"to": "+886912345678", "text": "x", "status_events": "sent"},
            "status_events: expected a non-empty array of states",
        ),
    ],
)
def test_the_first_fault_is_named(body: Any, detail: str) -> None:
    assert refusal(body) == detail


def test_null_is_the_same_as_leaving_a_field_out() -> None:
    body = {"to": "+886912345678", "text": "x"}
    nulls = dict.fromkeys(
        ("idempotency_key", "send_at", "status_url", "status_events", "route", "priority"), None
    )
    assert validate_message({**body, **nulls}, Limits(), NOW) == validate_message(
        body, Limits(), NOW
    )
