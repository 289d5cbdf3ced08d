"""Route choice is a pure function of the registry snapshot and the router's own send memory."""

from __future__ import annotations

from pydantic import SecretStr

from goipd.config import RouteRule, RouteTarget, RoutingSettings, Server, parse_settings
from goipd.dispatch.routing import CloudChoice, LineChoice, Router, match_rule
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.ledger.shared import ProviderDisable
from goipd.model import whole_server
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus, TextParts

NOW = 1_000_000.0


def status(
    line: str,
    *,
    online: bool = True,
    reg: str = "LOGIN",
    remain: int | None = None,
    day: int | None = None,
) -> LineStatus:
    return LineStatus(line, online, reg == "LOGIN", reg, remain, day)


def server(name: str, groups: dict[str, tuple[str, ...]] | None = None) -> Server:
    return Server(
        name, f"http://127.0.0.1/{name}", "root", SecretStr("pw"), 15.0, 5.0, None, (), groups or {}
    )


def make_router(
    fleet: dict[str, list[LineStatus]],
    *,
    rules: tuple[RouteRule, ...] = (),
    groups: dict[str, dict[str, tuple[str, ...]]] | None = None,
    rate: int = 6,
    clouds: tuple[str, ...] = (),
) -> tuple[Router, LineRegistry]:
    registry = LineRegistry(fleet)
    for name, statuses in fleet.items():
        registry.apply_poll(name, statuses, NOW - 100)
    servers = {name: server(name, (groups or {}).get(name)) for name in fleet}
    return Router(registry, RoutingSettings(line_rate_per_minute=rate), rules, servers, clouds), (
        registry
    )


def rules(yaml_text: str) -> tuple[RouteRule, ...]:
    return parse_settings(yaml_text, environ={}).routes


def test_only_usable_lines_are_chosen() -> None:
    router, _ = make_router(
        {
            "hq": [
                status("G1", online=False),
                status("G2", reg="LOGOUT"),
                status("G3", reg=""),
                status("G4", day=0),
                status("G5", remain=0),
                status("G6"),
            ]
        }
    )
    choice = router.choose(router.targets_for("+886912345678"), NOW)
    assert choice == LineChoice("hq", "G6", None, 1)


def test_least_recently_used_first_then_most_quota() -> None:
    router, _ = make_router({"hq": [status("G1", day=5), status("G2", day=50), status("G3")]})
    targets = router.targets_for("+886912345678")
    order = []
    for step in range(6):
        choice = router.choose(targets, NOW + step)
        assert isinstance(choice, LineChoice)
        order.append(choice.line)
        router.record_use(choice, 1, NOW + step)
    # Unlimited first, then the larger day quota; afterwards strict rotation.
    assert order == ["G3", "G2", "G1", "G3", "G2", "G1"]


def test_send_rate_per_line_and_capacity() -> None:
    router, _ = make_router({"hq": [status("G1"), status("G2")]}, rate=3)
    targets = router.targets_for("+886912345678")
    first = router.choose(targets, NOW, want=10)
    assert isinstance(first, LineChoice) and first.capacity == 3
    router.record_use(first, 3, NOW)
    second = router.choose(targets, NOW, want=10)
    assert isinstance(second, LineChoice) and second.line != first.line
    router.record_use(second, 3, NOW)
    assert router.choose(targets, NOW + 1) is None  # both lines at their rate
    assert router.choose(targets, NOW + 61) is not None  # the window has passed


def test_local_quota_decrement_prevents_overshoot() -> None:
    router, registry = make_router({"hq": [status("G1", day=2)]})
    targets = router.targets_for("+886912345678")
    choice = router.choose(targets, NOW, want=5)
    assert isinstance(choice, LineChoice) and choice.capacity == 2
    router.record_use(choice, 2, NOW)
    assert registry.line("hq", "G1").day_remain_sms == 0  # type: ignore[union-attr]
    assert router.choose(targets, NOW + 120) is None


def test_quarantined_and_excluded_lines_are_skipped() -> None:
    router, registry = make_router({"hq": [status("G1"), status("G2")]})
    targets = router.targets_for("+886912345678")
    g1 = registry.line("hq", "G1")
    assert g1 is not None
    g1.quarantined_until = NOW + 600
    assert router.choose(targets, NOW) == LineChoice("hq", "G2", None, 1)
    assert router.choose(targets, NOW, exclude={"hq/G2"}) is None
    assert router.choose(targets, NOW + 601, exclude={"hq/G2"}) == LineChoice("hq", "G1", None, 1)


def test_rules_by_prefix_and_country_fall_through_in_order() -> None:
    routing_rules = rules("""
servers:
  - {name: tw, url: "http://h/tw", username: u, password: p,
     groups: {Chunghwa: [G1], FarEasTone: [G2]}}
  - {name: cn, url: "http://h/cn", username: u, password: p}
providers:
  smsgo: {username: u, password: p, url: "http://127.0.0.1:1", backup_url: "http://127.0.0.1:2"}
  paasoo: {key: k, secret: s, url: "http://127.0.0.1:3"}
  c123: {uid: u, password: p, url: "http://127.0.0.1:4"}
routes:
  - match: {prefix: ["+8869"]}
    via: [{server: tw, provider: FarEasTone}, {server: tw}, {cloud: smsgo}]
  - match: {country: [CN]}
    via: [{server: cn, provider: "移动"}, {cloud: c123}]
  - via: [{cloud: paasoo}]
""")
    assert [t.describe() for t in match_rule(routing_rules, "+886912345678")] == [
        "tw[FarEasTone]",
        "tw",
        "cloud:smsgo",
    ]
    assert [t.describe() for t in match_rule(routing_rules, "+8613800138000")] == [
        "cn[移动]",
        "cloud:c123",
    ]
    assert [t.describe() for t in match_rule(routing_rules, "+14155550100")] == ["cloud:paasoo"]
    router, registry = make_router(
        {"tw": [status("G1"), status("G2", reg="LOGOUT")], "cn": [status("C1")]},
        rules=routing_rules,
        groups={"tw": {"Chunghwa": ("G1",), "FarEasTone": ("G2",)}},
        clouds=("smsgo", "c123", "paasoo"),
    )
    # FarEasTone's only line is logged out: fall through to any tw line.
    assert router.choose(router.targets_for("+886912345678"), NOW) == LineChoice(
        "tw", "G1", None, 1
    )
    # No line map for cn: the SMS Server picks inside the carrier group.
    assert router.choose(router.targets_for("+8613800138000"), NOW) == LineChoice(
        "cn", None, "移动", 1
    )
    registry.apply_failure("cn", ErrorReason.TIMEOUT, "down", NOW)
    assert router.choose(router.targets_for("+8613800138000"), NOW) == CloudChoice("c123", 1)
    router.cloud_enabled["c123"] = False
    assert router.choose(router.targets_for("+8613800138000"), NOW) is None


def test_a_disabled_provider_gets_one_probe_per_interval() -> None:
    registry = LineRegistry({})
    settings = RoutingSettings(provider_probe_interval="10m")
    router = Router(registry, settings, (), {}, ("smsgo", "paasoo"))
    targets = router.targets_for("+886912345678")
    assert router.choose(targets, NOW) == CloudChoice("paasoo", 1)
    assert router.disabled_by("paasoo") is None
    assert router.disable_cloud("paasoo", NOW, "404") is True
    assert router.disabled_by("paasoo") == "404"
    assert router.choose(targets, NOW) == CloudChoice("smsgo", 1)
    assert router.choose(targets, NOW + 599) == CloudChoice("smsgo", 1)
    # The interval is up: one send probes paasoo, the next ones go on to smsgo.
    assert router.choose(targets, NOW + 600) == CloudChoice("paasoo", 1)
    assert router.choose(targets, NOW + 601) == CloudChoice("smsgo", 1)
    # The probe was refused again: disabled already, the next probe one interval later.
    assert router.disable_cloud("paasoo", NOW + 601, "401") is False
    assert router.disabled_by("paasoo") == "401"
    assert router.choose(targets, NOW + 1200) == CloudChoice("smsgo", 1)
    assert router.choose(targets, NOW + 1201) == CloudChoice("paasoo", 1)
    # The probe was answered: back for good.
    assert router.enable_cloud("paasoo") is True
    assert router.enable_cloud("paasoo") is False
    assert router.disabled_by("paasoo") is None
    assert router.choose(targets, NOW + 1202) == CloudChoice("paasoo", 1)
    assert router.choose(targets, NOW + 1203) == CloudChoice("paasoo", 1)


def test_changes_are_reported_adoptions_are_not_and_only_a_prober_probes() -> None:
    probing = {"paasoo": False}
    router = Router(
        LineRegistry({}),
        RoutingSettings(provider_probe_interval="10m"),
        (),
        {},
        ("smsgo", "paasoo"),
        probes=lambda name: probing[name],
    )
    changed: list[str] = []
    router.on_cloud_change = changed.append
    targets = router.targets_for("+886912345678")
    assert router.disable_cloud("paasoo", NOW, "404") is True
    assert router.disable_cloud("paasoo", NOW + 5, "401") is False
    assert router.cloud_disable("paasoo") == ProviderDisable("paasoo", "401", NOW, NOW + 605)
    assert changed == ["paasoo", "paasoo"]
    # Not this instance's to probe: the provider stays out past its probe time.
    assert router.choose(targets, NOW + 605) == CloudChoice("smsgo", 1)
    probing["paasoo"] = True
    assert router.choose(targets, NOW + 606) == CloudChoice("paasoo", 1)
    # An adopted disable keeps the probe time this router moved on; adopting changes nothing
    # to store.
    stored = ProviderDisable("paasoo", "401", NOW, NOW + 605)
    assert router.adopt_cloud_disable(stored) is False
    assert router.cloud_disable("paasoo") == ProviderDisable("paasoo", "401", NOW, NOW + 1206)
    assert router.adopt_cloud_enable("paasoo") is True and router.adopt_cloud_enable("x") is False
    assert router.adopt_cloud_disable(stored) is True
    assert router.cloud_disable("paasoo") == stored
    assert router.adopt_cloud_disable(ProviderDisable("unknown", "1", NOW, NOW)) is False
    assert changed == ["paasoo", "paasoo"]
    assert router.enable_cloud("paasoo") is True and changed[-1] == "paasoo"


def test_a_paused_provider_is_left_out_until_the_pause_ends() -> None:
    router = Router(LineRegistry({}), RoutingSettings(), (), {}, ("c123", "paasoo"))
    targets = router.targets_for("+8613800138000")
    assert router.choose(targets, NOW) == CloudChoice("c123", 1)
    router.pause_cloud("c123", NOW + 30)
    router.pause_cloud("c123", NOW + 10)  # a shorter pause does not cut the longer one
    assert router.choose(targets, NOW + 29) == CloudChoice("paasoo", 1)
    assert router.choose(targets, NOW + 30) == CloudChoice("c123", 1)


def test_probe_interval_zero_never_probes() -> None:
    router = Router(
        LineRegistry({}), RoutingSettings(provider_probe_interval="0s"), (), {}, ("smsgo",)
    )
    router.disable_cloud("smsgo", NOW)
    assert router.choose(router.targets_for("+886912345678"), NOW + 10**7) is None
    assert router.enable_cloud("unknown") is False


def test_no_rules_means_any_line_then_clouds() -> None:
    router, _ = make_router(
        {"a": [status("G1", online=False)], "b": [status("G1")]}, clouds=("smsgo",)
    )
    targets = router.targets_for("+886912345678")
    assert router.choose(targets, NOW) == LineChoice("b", "G1", None, 1)
    assert router.choose(targets, NOW, exclude={"b/G1"}) == CloudChoice("smsgo", 1)


def test_lines_appearing_and_going_are_followed() -> None:
    router, registry = make_router({"hq": [status("G1")]})
    targets = router.targets_for("+886912345678")
    assert router.choose(targets, NOW) == LineChoice("hq", "G1", None, 1)
    registry.apply_poll("hq", [status("G2")], NOW)
    assert router.choose(targets, NOW) == LineChoice("hq", "G2", None, 1)
    registry.set_servers([])
    assert router.choose(targets, NOW) is None


# --- only servers whose lines changed are re-synced ----------------------------------------------


def _lru_keys(router: Router) -> tuple[set[tuple[str, str]], dict[str, set[tuple[str, str]]]]:
    return set(router._fleet_lru), {name: set(lru) for name, lru in router._server_lru.items()}


def test_router_follows_lines_and_servers_incrementally() -> None:
    router, registry = make_router(
        {"hq": [status("G1"), status("G2")], "b2": [status("X1")]},
        rate=600,
    )
    targets = router.targets_for("+886912345678")
    first = router.choose(targets, NOW)
    assert isinstance(first, LineChoice)
    router.record_use(first, 1, NOW)
    assert _lru_keys(router) == (
        {("hq", "G1"), ("hq", "G2"), ("b2", "X1")},
        {"hq": {("hq", "G1"), ("hq", "G2")}, "b2": {("b2", "X1")}},
    )
    # A new line with the most quota goes to the front; a line that goes stays (parked).
    registry.apply_poll("hq", [status("G1"), status("G3", remain=1000)], NOW)
    assert router.choose(targets, NOW) == LineChoice("hq", "G3", None, 1)
    assert ("hq", "G2") in router._fleet_lru
    # Polls that change no line id leave the orders alone, whatever else they change.
    order = list(router._fleet_lru)
    registry.apply_poll("hq", [status("G1", reg="LOGOUT"), status("G3", remain=999)], NOW)
    router.choose(targets, NOW)
    assert list(router._fleet_lru)[: len(order)] == order
    # A removed server and its send memory are forgotten; the rest is kept.
    registry.set_servers(["hq"])
    assert router.choose(targets, NOW) == LineChoice("hq", "G3", None, 1)
    assert _lru_keys(router) == (
        {("hq", "G1"), ("hq", "G2"), ("hq", "G3")},
        {"hq": {("hq", "G1"), ("hq", "G2"), ("hq", "G3")}},
    )
    assert all(key[0] == "hq" for key in router._recent)
    # Back under the same name: its lines come back as new ones.
    registry.set_servers(["hq", "b2"])
    registry.apply_poll("b2", [status("X2")], NOW)
    router.choose(targets, NOW)
    assert _lru_keys(router)[1]["b2"] == {("b2", "X2")}


def test_sends_that_do_not_happen_give_the_line_back() -> None:
    """Planned sends another instance claimed first (or the shared rate refused) return their
    place in the line's rate window and quota."""
    registry = LineRegistry(["hq"])
    registry.apply_poll("hq", [status("G1", day=10)], NOW)
    router = Router(registry, RoutingSettings(line_rate_per_minute=3), (), {}, ())
    targets = (RouteTarget(server="*"),)
    choice = router.choose(targets, NOW, want=5)
    assert isinstance(choice, LineChoice) and choice.capacity == 3
    router.record_use(choice, 3, NOW)
    assert router.choose(targets, NOW) is None
    router.release_use(choice, 2)
    again = router.choose(targets, NOW, want=5)
    assert isinstance(again, LineChoice) and again.capacity == 2
    assert registry.line("hq", "G1").day_remain_sms == 9  # type: ignore[union-attr]
    router.release_use(CloudChoice("smsgo", 1), 1)  # not a line: nothing to give back


def test_routing_never_chooses_a_manually_quarantined_line() -> None:
    router, registry = make_router({"hq": [status("G1"), status("G2")]})
    targets = router.targets_for("+886912345678")
    registry.set_manual("hq", "G1", ManualQuarantine(None, NOW))
    for step in range(20):
        choice = router.choose(targets, NOW + step * 120)
        assert choice is not None and choice.line == "G2"  # type: ignore[union-attr]
        router.record_use(choice, 1, NOW + step * 120)
    registry.set_manual("hq", "G1", None)
    lines = set()
    for step in range(4):
        choice = router.choose(targets, NOW + 3000 + step * 120)
        assert choice is not None
        lines.add(choice.line)  # type: ignore[union-attr]
        router.record_use(choice, 1, NOW + 3000 + step * 120)
    assert lines == {"G1", "G2"}


def test_quota_is_counted_in_the_servers_parts() -> None:
    router, registry = make_router({"hq": [status("G1", day=5), status("G2")]}, rate=600)
    three_parts = TextParts("a" * 400)  # 400 bytes: ceil(400 / 153) = 3 parts
    targets = (RouteTarget(server="hq", line="G1"),)
    choice = router.choose(targets, NOW, want=4, text=three_parts)
    # 5 parts left take one 3-part send, not four.
    assert choice == LineChoice("hq", "G1", None, 1, 3)
    router.record_use(choice, 1, NOW)
    assert registry.line("hq", "G1").day_remain_sms == 2  # type: ignore[union-attr]
    assert router.choose(targets, NOW, text=three_parts) is None
    router.release_use(choice, 1)
    assert registry.line("hq", "G1").day_remain_sms == 5  # type: ignore[union-attr]


def test_a_server_without_php_mbstring_counts_bytes() -> None:
    router, registry = make_router({"hq": [status("G1", day=1)]})
    chinese = TextParts("測" * 70)
    assert router.choose(router.targets_for("+886912345678"), NOW, text=chinese) is not None
    registry.note_setup_problems("hq", ["Warning: need install php-mbstring module"])
    # 210 bytes: two parts by the byte formula, and the line has one left.
    assert router.choose(router.targets_for("+886912345678"), NOW, text=chinese) is None


def test_busy_servers_and_a_whole_server_exclusion_are_skipped() -> None:
    router, _ = make_router({"hq": [status("G1")], "branch": [status("G2")]})
    targets = router.targets_for("+886912345678")
    assert router.choose(targets, NOW, busy={"hq"}).server == "branch"  # type: ignore[union-attr]
    assert router.choose(targets, NOW, busy={"hq", "branch"}) is None
    assert router.choose(targets, NOW, exclude={whole_server("hq")}).server == "branch"  # type: ignore[union-attr]
    pinned = (RouteTarget(server="hq"),)
    assert router.choose(pinned, NOW, busy={"hq"}) is None
    assert router.choose(pinned, NOW, exclude={whole_server("hq")}) is None


def test_a_text_no_line_can_carry_goes_to_a_cloud_hop_only() -> None:
    router, _ = make_router({"hq": [status("G1")]}, clouds=("smsgo",))
    targets = (RouteTarget(server="hq"), RouteTarget(cloud="smsgo"))
    assert isinstance(router.choose(targets, NOW), LineChoice)
    assert router.choose(targets, NOW, lines=False) == CloudChoice("smsgo", 1)
    assert router.choose(targets[:1], NOW, lines=False) is None
