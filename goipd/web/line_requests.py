"""The bodies of the line operations (quarantine, reboot, USSD, balance), as declared models:
validation runs them and the OpenAPI document is generated from them. Every body is optional
(no body is `{}`) except USSD's."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError

from goipd.accept.requests import (
    NO_CONTROL_CHARACTERS,
    Body,
    field_names,
    first_error,
    unknown_field,
    value_at,
)
from goipd.model import USSD_CODE, USSD_CODE_RULE
from goipd.problem import Problem, json_kind


class QuarantineRequest(Body):
    """Why the line is taken out of routing; the body may be left out."""

    reason: Annotated[
        Annotated[str, Field(max_length=200, pattern=NO_CONTROL_CHARACTERS)] | None,
        Field(description="shown with the quarantine (status page, API, log)"),
    ] = None


class RebootRequest(Body):
    """What to reboot; the body may be left out (the line's GSM module)."""

    device: Annotated[
        bool, Field(description="reboot the GoIP device the line is on, not only its module")
    ] = False


class UssdRequest(Body):
    """The USSD code to send on the line."""

    code: Annotated[str, Field(pattern=f"^{USSD_CODE.pattern}$", examples=["*101#"])]


class BalanceRequest(Body):
    """No fields: the body may be left out, or be an empty object."""


LineRequest = TypeVar("LineRequest", bound=Body)


def parse_line_request(body: Any, model: type[LineRequest]) -> LineRequest:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc, body, model) from None


def _refusal(exc: ValidationError, body: Any, model: type[Body]) -> Problem:
    if not isinstance(body, dict):
        return Problem(400, f"expected a JSON object, got {json_kind(body)}")
    error = first_error(exc)
    field = error["loc"][0]
    if error["type"] == "extra_forbidden":
        return Problem(422, unknown_field(field, field_names(model)))
    value = value_at(body, error["loc"])
    kind = json_kind(value)
    wrong_type = error["type"] in ("string_type", "bool_type", "missing")
    if field == "reason":
        if wrong_type:
            return Problem(422, f"reason: expected a string, got {kind}")
        return Problem(422, "reason: at most 200 characters, no control characters")
    if field == "device":
        return Problem(422, f"device: expected true or false, got {kind}")
    if field == "code" and not wrong_type:
        # The words of the USSD client's own check, which this model's pattern now runs
        # before any lease is taken.
        return Problem(422, f"code: {USSD_CODE_RULE}")
    return Problem(422, f"code: expected a USSD code like *101#, got {kind}")
