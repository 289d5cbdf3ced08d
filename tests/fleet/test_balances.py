"""Which balance check applies to which line: the one naming the line, then one naming a carrier
group the line is in, then one for its server; lines gone or not reported have none."""

from __future__ import annotations

from goipd.config import BalanceCheck, parse_settings
from goipd.fleet.balances import check_for, targets
from goipd.fleet.registry import LineRegistry
from goipd.upstream.goip import LineStatus

SERVER = BalanceCheck(server="hq", code="*101#", pattern="x")
GROUP = BalanceCheck(server="hq", provider="CHT", code="*131#", pattern="y")
LINE = BalanceCheck(server="hq", line="G103", code="*1#", pattern="z")
OTHER = BalanceCheck(server="edge", code="*9#", pattern="w")
GROUPS = {"CHT": ("G102", "G103")}


def test_the_most_specific_check_applies() -> None:
    checks = [SERVER, GROUP, LINE, OTHER]
    assert check_for(checks, "hq", "G101", GROUPS) is SERVER
    assert check_for(checks, "hq", "G102", GROUPS) is GROUP
    assert check_for(checks, "hq", "G103", GROUPS) is LINE
    assert check_for(checks, "edge", "G103", GROUPS) is OTHER
    assert check_for([GROUP], "hq", "G101", GROUPS) is None
    assert check_for([], "hq", "G101", GROUPS) is None


def test_targets_are_the_reported_lines_a_check_applies_to() -> None:
    settings = parse_settings(
        "servers:\n"
        "  - {name: hq, url: 'http://127.0.0.1:9', username: u, password: p,"
        " groups: {CHT: [G102, G103]}}\n"
        "balances:\n"
        "  checks:\n"
        "    - {server: hq, provider: CHT, code: '*131#', pattern: y}\n"
        "    - {server: hq, line: G101, code: '*1#', pattern: z}\n",
        environ={},
    )
    registry = LineRegistry(["hq"])
    registry.apply_poll(
        "hq",
        [
            LineStatus(line, True, True, "LOGIN", None, None)
            for line in ("G101", "G102", "G103", "G104")
        ],
        1000.0,
    )
    registry.apply_poll(
        "hq",
        [LineStatus(line, True, True, "LOGIN", None, None) for line in ("G101", "G102", "G104")],
        1010.0,
    )
    found = [(t.line, t.check.code) for t in targets(settings, registry)]
    # G103 is gone; G104 is in no group and has no check of its own.
    assert found == [("G101", "*1#"), ("G102", "*131#")]
