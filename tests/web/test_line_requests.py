"""The bodies of the line operations: what each accepts, and the words of every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from goipd.accept.requests import Body
from goipd.problem import Problem
from goipd.web.line_requests import (
    BalanceRequest,
    QuarantineRequest,
    RebootRequest,
    UssdRequest,
    parse_line_request,
)


@pytest.mark.parametrize(
    ("model", "body", "status", "detail"),
    [
        (QuarantineRequest, [], 400, "expected a JSON object, got an array"),
        (QuarantineRequest, {"why": "x"}, 422, "unknown field 'why'; allowed: reason"),
        (QuarantineRequest, {"reason": 5}, 422, "reason: expected a string, got a number"),
        (
            QuarantineRequest,
            {"reason": "x" * 201},
            422,
            "reason: at most 200 characters, no control characters",
        ),
        (
            QuarantineRequest,
            {"reason": "a\x1bb"},
            422,
            "reason: at most 200 characters, no control characters",
        ),
        (RebootRequest, {"device": "yes"}, 422, "device: expected true or false, got a string"),
        (RebootRequest, {"device": None}, 422, "device: expected true or false, got null"),
        (RebootRequest, {"module": 1}, 422, "unknown field 'module'; allowed: device"),
        (UssdRequest, {}, 422, "code: expected a USSD code like *101#, got null"),
        (UssdRequest, {"code": 101}, 422, "code: expected a USSD code like *101#, got a number"),
        (UssdRequest, {"code": "*101#$"}, 422, "code: a USSD code is 1 to 64 of 0-9 * # +"),
        (UssdRequest, {"code": ""}, 422, "code: a USSD code is 1 to 64 of 0-9 * # +"),
        (BalanceRequest, {"line": "G101"}, 422, "unknown field 'line'; allowed: "),
        (BalanceRequest, "x", 400, "expected a JSON object, got a string"),
    ],
)
def test_refusals(model: type[Body], body: Any, status: int, detail: str) -> None:
    with pytest.raises(Problem) as info:
        parse_line_request(body, model)
    assert (info.value.status, info.value.detail) == (status, detail)


def test_what_is_accepted() -> None:
    assert parse_line_request({}, QuarantineRequest).reason is None
    assert parse_line_request({"reason": "new SIM\n"}, QuarantineRequest).reason == "new SIM\n"
    assert parse_line_request({}, RebootRequest).device is False
    assert parse_line_request({"device": True}, RebootRequest).device is True
    assert parse_line_request({"code": "*101#"}, UssdRequest).code == "*101#"
    assert parse_line_request({}, BalanceRequest) == BalanceRequest()
