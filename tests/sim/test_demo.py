"""`make demo`'s generated configuration is valid and fits its fleet: every device port names a
line of the fleet, every balance check reads the answers the fleet's lines give (but the one
line the demo makes unreadable), and one dead SIM per server at most comes back from a reboot."""

from __future__ import annotations

from pathlib import Path

from goipd.config import load_settings
from goipd.sim.demo import write_demo_files
from goipd.sim.goip import SimFleet, demo_spec
from goipd.upstream.goip_ussd import BalanceUnreadable, parse_balance


def test_the_demo_config_is_valid_and_fits_its_fleet(tmp_path: Path) -> None:
    settings = load_settings(write_demo_files(tmp_path, 9090, 8080))
    spec = demo_spec(None)
    SimFleet.from_spec(spec)  # the simulator takes it as it is
    lines = {s["name"]: {line["line_id"]: line for line in s["lines"]} for s in spec["servers"]}
    assert settings.remediation.enabled
    for server in settings.servers:
        ported = [line for device in server.devices for line in device.lines.values()]
        assert sorted(ported) == sorted(lines[server.name])
        [check] = [c for c in settings.balances.checks if c.server == server.name]
        unreadable = []
        for line_id, line in lines[server.name].items():
            try:
                assert parse_balance(line["ussd"][check.code], check.pattern) > 0
            except BalanceUnreadable:
                unreadable.append(line_id)
        assert unreadable == [list(lines[server.name])[-1]]
        healed = [
            line
            for line in lines[server.name].values()
            if line.get("reboot_result") == "registered" and line.get("reg") in ("LOGOUT", "")
        ]
        assert len(healed) <= 1
    assert any(
        line.get("reboot_result") == "registered" and line.get("reg") == "LOGOUT"
        for server in lines.values()
        for line in server.values()
    )
