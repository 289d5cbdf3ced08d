"""The JSON documents the API answers with, declared once as TypedDicts: the OpenAPI document's
response schemas are generated from them (web/openapi.py), and tests/web/test_documents.py
holds the handlers' JSON to them. Each one's title is its name in the OpenAPI document, and its
docstring and field descriptions are what the document says of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config

# pydantic reads TypedDicts from typing_extensions only, before Python 3.12.
from typing_extensions import TypedDict

from goipd.accept.requests import EventState
from goipd.config import RouteTarget
from goipd.fleet.actions import Action
from goipd.fleet.registry import LineState
from goipd.model import PRIORITIES, PUBLIC_STATES
from goipd.upstream.goip import SETUP_FIXES
from goipd.upstream.goip_device import WEAK_SIGNAL_DBM
from goipd.upstream.segments import Encoding

if TYPE_CHECKING:
    PublicState = str
    LineStateName = str
    SetupProblemKey = str
else:
    # Enums taken from the lists the code works with, so a new state is documented as it comes.
    PublicState = Literal[PUBLIC_STATES]
    LineStateName = Literal[tuple(state.value for state in LineState)]
    SetupProblemKey = Literal[tuple(SETUP_FIXES)]

Time = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
UnixTime = Annotated[float, Field(description="Unix time")]
Outcome = Literal["sent", "deduplicated", "rate_limited"]


def _titled(name: str) -> ConfigDict:
    return ConfigDict(title=name)


@with_config(_titled("Problem"))
class ProblemDocument(TypedDict):
    """RFC 9457 problem document; `detail` names the field or the rule that refused."""

    type: str
    title: str
    status: int
    detail: str
    instance: NotRequired[str]


@with_config(_titled("RecipientError"))
class RecipientError(TypedDict):
    code: str
    meaning: str


@with_config(_titled("Recipient"))
class RecipientDocument(TypedDict):
    to: str
    state: PublicState
    attempts: int
    route: Annotated[str | None, Field(description='"goip" or the cloud provider, once chosen')]
    server: str | None
    line: str | None
    task_id: str | None
    upstream_id: str | None
    error: RecipientError | None
    created_at: Time
    updated_at: Time
    submitted_at: Time
    sent_at: Time
    delivered_at: Time


@with_config(_titled("Message"))
class MessageDocument(TypedDict):
    id: str
    created_at: Time
    text: str
    segments: int
    encoding: Encoding
    route: RouteTarget | None
    send_at: Time
    idempotency_key: str | None
    priority: Annotated[int, Field(ge=PRIORITIES[0], le=PRIORITIES[-1])]
    expires_at: Time
    status_url: Annotated[str | None, Field(description="its query, if any, is shown as ?...")]
    status_events: list[EventState] | None
    recipients: list[RecipientDocument]


@with_config(_titled("MessagePage"))
class MessagePage(TypedDict):
    messages: list[MessageDocument]
    next: Annotated[str | None, Field(description="`after` for the next page; null: the last")]


InboundDocument = TypedDict(
    "InboundDocument",
    {
        "id": int,
        "source": Annotated[str, Field(description="the GoIP server or cloud provider")],
        "line": str | None,
        "from": str,
        "to": str | None,
        "text": str,
        "received_at": Time,
        "upstream_time": Annotated[
            str, Field(description="the sender's timestamp as it came (server local time)")
        ],
    },
)
with_config(_titled("Inbound"))(InboundDocument)


@with_config(_titled("InboundPage"))
class InboundPage(TypedDict):
    inbound: list[InboundDocument]
    next: Annotated[str | None, Field(description="`before` for the next page; null: the last")]


@with_config(_titled("AlertmanagerResult"))
class AlertmanagerResult(TypedDict):
    receiver: str
    status: Literal["firing", "resolved"]
    outcome: Outcome
    message_id: str | None
    duplicate_of: NotRequired[str | None]
    recipients: Annotated[
        dict[str, Outcome], Field(description="number → sent, deduplicated or rate_limited")
    ]


@with_config(_titled("ManualQuarantine"))
class ManualQuarantine(TypedDict):
    reason: str | None
    since: UnixTime


@with_config(_titled("Quarantine"))
class QuarantineDocument(TypedDict):
    server: str
    line: str
    reported: Annotated[bool, Field(description="the server reports this line now")]
    quarantined: bool
    manual_quarantine: ManualQuarantine | None
    released: NotRequired[list[Literal["manual", "errors"]]]


@with_config(_titled("SetupProblem"))
class SetupProblem(TypedDict):
    problem: SetupProblemKey
    warning: str
    fix: str


@with_config(_titled("Server"))
class ServerDocument(TypedDict):
    """One SMS Server as the poller sees it."""

    server: str
    up: bool
    polled: bool
    last_poll: float | None
    last_success: float | None
    last_error: str | None
    last_error_reason: str | None
    consecutive_failures: int
    stalled: Annotated[
        bool,
        Field(
            description="the server's engine does not send (sends stay unsend): routing leaves "
            "it alone until they move on"
        ),
    ]
    stalled_since: float | None
    stall_detail: str | None
    lines: int
    setup_problems: Annotated[
        list[SetupProblem],
        Field(
            description="what the server's replies show about its setup (a PHP warning before "
            "the JSON), with the fix"
        ),
    ]


@with_config(_titled("StatusServer"))
class StatusServer(ServerDocument):
    counts: Annotated[
        dict[str, int], Field(description="lines by state, plus quarantined and healthy tallies")
    ]


@with_config(_titled("Queue"))
class QueueFigures(TypedDict):
    """Recipients by state, and the age of the oldest one waiting."""

    queued: int
    submitted: int
    sent: int
    delivered: int
    failed: int
    cancelled: int
    expired: int
    oldest_age_seconds: float


@with_config(_titled("Provider"))
class ProviderFigures(TypedDict):
    provider: str
    enabled: bool
    balance: float | None


@with_config(_titled("StoredQuarantine"))
class StoredQuarantine(TypedDict):
    server: str
    line: str
    reported: bool
    reason: str | None
    since: UnixTime


@with_config(_titled("Status"))
class StatusDocument(TypedDict):
    time: Annotated[float, Field(description="Unix time of the answer")]
    servers: list[StatusServer]
    queue: QueueFigures
    providers: list[ProviderFigures]
    manual_quarantines: list[StoredQuarantine]


@with_config(_titled("BalanceError"))
class BalanceError(TypedDict):
    reason: str
    detail: str
    at: float


@with_config(_titled("Balance"))
class BalanceDocument(TypedDict):
    value: float | None
    read_at: float | None
    answer: Annotated[str | None, Field(description="the carrier's words")]
    low: float | None
    is_low: bool
    error: BalanceError | None


@with_config(_titled("Remediation"))
class RemediationDocument(TypedDict):
    """The line's latest self-healing of the last 7 days."""

    incident: Literal["unregistered", "quarantined"]
    incident_since: float
    action: str
    started_at: float
    result: Literal["pending", "recovered", "failed", "refused"]
    finished_at: float | None
    detail: str | None


@with_config(_titled("LineDeviceError"))
class LineDeviceError(TypedDict):
    """Why the device's latest poll failed."""

    reason: str
    detail: str
    at: float
    last_ok: float | None


@with_config(_titled("LineDevice"))
class LineDeviceDocument(TypedDict):
    """What the line's GoIP device port shows (servers[].devices); null on a line no device is
    configured for. Read by the instance polling the server: readings are null until its
    first poll of the device."""

    device: str
    port: Annotated[int, Field(ge=1, le=32)]
    signal_dbm: Annotated[
        int | None, Field(description="2 x CSQ - 113; null when the CSQ is 99 (unknown)")
    ]
    csq: Annotated[int, Field(ge=0, le=31)] | None
    operator: str | None
    sim_present: bool | None
    module_on: bool | None
    gsm_registered: bool | None
    weak_signal: Annotated[
        bool,
        Field(description=f"signal_dbm is {WEAK_SIGNAL_DBM} or below: the alert's threshold"),
    ]
    seen_at: Annotated[float | None, Field(description="when the device last showed this port")]
    stale: Annotated[bool, Field(description="the readings are older than 3 poll intervals")]
    error: LineDeviceError | None


@with_config(_titled("LineError"))
class LineError(TypedDict):
    """The line's latest line-class send failure."""

    code: str
    meaning: str
    at: float


@with_config(_titled("Line"))
class LineDocument(TypedDict):
    """One line of an SMS Server, with its state, quotas, health and SIM operations."""

    server: str
    line: str
    state: LineStateName
    online: bool
    registered: bool
    reg: Annotated[str, Field(description="the registration state as the server reports it")]
    remain_sms: int | None
    day_remain_sms: int | None
    healthy: bool
    quarantined: bool
    quarantined_until: float | None
    quarantine_reason: str | None
    manual_quarantine: ManualQuarantine | None
    last_error: LineError | None
    first_seen: float
    last_change: float
    last_seen: float
    balance: BalanceDocument | None
    remediation: RemediationDocument | None
    device: LineDeviceDocument | None


@with_config(_titled("Lines"))
class LinesDocument(TypedDict):
    servers: list[ServerDocument]
    lines: list[LineDocument]


@with_config(_titled("ActionResult"))
class ActionResultDocument(TypedDict):
    server: str
    line: str
    action: Action
    ok: bool
    detail: Annotated[str, Field(description="the answer, or why it failed")]
    seconds: float
