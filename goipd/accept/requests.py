"""The bodies of the requests that become messages, as declared models: each says once which
fields a body may hold, their JSON types and their limits. Validation runs the model
(pydantic-core, strict: a JSON type is never coerced into another) and the OpenAPI document is
generated from it, so what is checked and what is documented cannot drift apart.

What no model can say is checked after it by the code that accepts the body: a phone number's
validity, names from the configuration, times relative to now, the SMS Server's quirks. Fields
are declared in the order they were always checked in, because a refusal names the first
failing one (pydantic reports errors in field order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic_core import ErrorDetails

# pydantic reads TypedDicts from typing_extensions only, before Python 3.12.
from typing_extensions import TypedDict

from goipd.accept.numbers import MAX_LENGTH as NUMBER_MAX_LENGTH
from goipd.callbacks.events import DEFAULT_EVENTS, EVENT_STATES
from goipd.callbacks.targets import STATUS_URL_MAX
from goipd.config import DURATION_PART, RouteTarget
from goipd.model import NORMAL_PRIORITY, PRIORITIES

if TYPE_CHECKING:
    EventState = str
else:
    # The states a status callback can report, from the one list of them.
    EventState = Literal[EVENT_STATES]

NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Text an SMS, a log line and the ledger carry as it is: newline, carriage return and tab
are allowed, no other C0 control character nor DEL."""
DURATION = rf"^(?:{DURATION_PART.pattern})+$"
"""A duration as config.parse_duration reads it, built from its grammar, written without
spaces: 90s, 5m, 1h30m."""

StringMap = dict[str, str]
PhoneNumber = Annotated[str, Field(max_length=NUMBER_MAX_LENGTH)]


class Body(BaseModel):
    """A body of goipd's own API: strict JSON types, and no field it does not know."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


@with_config(ConfigDict(strict=True, extra="forbid", title="NewMessage"))
class MessageRequest(TypedDict):
    """A message to send: its text, its recipients, and optionally how and when."""

    # A TypedDict, not a model: on the daemon's hottest path, validating into a dict of the
    # fields sent costs half of building a model instance with every default.

    to: Annotated[
        PhoneNumber | Annotated[list[PhoneNumber], Field(min_length=1)],
        Field(
            examples=["+886912345678", ["+886912345678", "0912345679"]],
            description="a phone number, or an array of them (at most api.max_recipients), in "
            "E.164 or in the national format of api.default_region",
        ),
    ]
    text: Annotated[
        str,
        Field(
            min_length=1,
            pattern=NO_CONTROL_CHARACTERS,
            examples=["Your code is 4711"],
            description='at most api.max_text_chars characters; not blank, not "0"',
        ),
    ]
    idempotency_key: NotRequired[Annotated[str, Field(min_length=1, max_length=128)] | None]
    send_at: NotRequired[
        Annotated[
            str | None,
            Field(
                json_schema_extra={"format": "date-time"},
                description="RFC 3339 time with an offset, at most 30 days ahead: a scheduled send",
            ),
        ]
    ]
    status_url: NotRequired[
        Annotated[
            Annotated[str, Field(max_length=STATUS_URL_MAX)] | None,
            Field(
                json_schema_extra={"format": "uri"},
                description="http(s) URL goipd POSTs signed recipient state changes to "
                "(docs/status-callbacks.md); the API token's default applies when absent",
            ),
        ]
    ]
    status_events: NotRequired[
        Annotated[
            Annotated[list[EventState], Field(min_length=1)] | None,
            Field(description=f"the states to report (default: {', '.join(DEFAULT_EVENTS)})"),
        ]
    ]
    route: NotRequired[
        Annotated[
            RouteTarget | None,
            Field(
                description='where to send: a server (a name or "*", narrowed to a carrier '
                "group with provider or to one goip_line with line) or a cloud provider; the "
                "routing rules decide when absent"
            ),
        ]
    ]
    priority: NotRequired[
        Annotated[
            Annotated[int, Field(ge=PRIORITIES[0], le=PRIORITIES[-1])] | None,
            Field(
                json_schema_extra={"default": NORMAL_PRIORITY},
                description="0 bulk, 1 normal, 2 high, 3 urgent: due recipients of a higher "
                "priority are dispatched first; within one, first in first out",
            ),
        ]
    ]
    expires_at: NotRequired[
        Annotated[
            str | None,
            Field(
                json_schema_extra={"format": "date-time"},
                description="a recipient not handed to an upstream by then becomes expired "
                "and is never sent (after send_at; not with valid_for)",
            ),
        ]
    ]
    valid_for: NotRequired[
        Annotated[
            Annotated[str, Field(pattern=DURATION)] | None,
            Field(
                examples=["5m"],
                description="validity from send_at (or now), 10s to 30d; the API token's "
                "default applies when neither this nor expires_at is given",
            ),
        ]
    ]


MESSAGE_REQUEST = TypeAdapter(MessageRequest)
MESSAGE_FIELDS = sorted(MessageRequest.__required_keys__ | MessageRequest.__optional_keys__)


class AlertRequest(BaseModel):
    """One alert of the notification."""

    # Alertmanager's fields goipd does not read are only type-checked, and unknown ones are
    # ignored: a newer Alertmanager may add some.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, title="AlertmanagerAlert")

    starts_at: Annotated[
        str | None, Field(alias="startsAt", json_schema_extra={"format": "date-time"})
    ] = None
    ends_at: Annotated[
        str | None, Field(alias="endsAt", json_schema_extra={"format": "date-time"})
    ] = None
    generator_url: Annotated[str | None, Field(alias="generatorURL")] = None
    status: Literal["firing", "resolved"]
    labels: StringMap | None
    annotations: StringMap | None = None
    fingerprint: str | None = None


class AlertmanagerRequest(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(
        strict=True, extra="ignore", frozen=True, title="AlertmanagerNotification"
    )

    version: Literal["4"]
    receiver: Annotated[str, Field(min_length=1)]
    status: Literal["firing", "resolved"]
    group_key: Annotated[str, Field(alias="groupKey")]
    alerts: Annotated[list[AlertRequest], Field(min_length=1)]
    truncated_alerts: Annotated[
        Annotated[int, Field(ge=0)] | None, Field(alias="truncatedAlerts")
    ] = 0
    external_url: Annotated[str | None, Field(alias="externalURL")] = None
    group_labels: Annotated[StringMap | None, Field(alias="groupLabels")] = None
    common_labels: Annotated[StringMap | None, Field(alias="commonLabels")] = None
    common_annotations: Annotated[StringMap | None, Field(alias="commonAnnotations")] = None


def first_error(exc: ValidationError) -> ErrorDetails:
    """The error a refusal names: an unknown field before anything else (the first of them in
    sorted order), else the first failing field in declaration order."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    if unknown:
        return min(unknown, key=lambda e: str(e["loc"][0]))
    return errors[0]


def unknown_field(name: str | int, allowed: Iterable[str]) -> str:
    return f"unknown field {str(name)[:40]!r}; allowed: {', '.join(sorted(allowed))}"


def field_names(model: type[BaseModel]) -> list[str]:
    """The names a body may use: the aliases where the model has them."""
    return [info.alias or name for name, info in model.model_fields.items()]


def value_at(body: Any, loc: tuple[int | str, ...]) -> Any:
    """What the client sent at `loc` (None where it sent nothing): an error detail names it."""
    value = body
    for step in loc:
        if isinstance(value, dict) and isinstance(step, str):
            value = value.get(step)
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            return None
    return value
