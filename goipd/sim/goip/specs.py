"""Fleet specs for the demo (three servers with a few sick lines) and the benchmarks (a large
uniform fleet), in the form `SimFleet.from_spec` reads."""

from __future__ import annotations

import random
from typing import Any


def demo_spec(status_push_base: str | None, seed: int = 7) -> dict[str, Any]:
    """Three SMS Servers (8, 16 and 32 lines) with a few sick lines, as a rack really looks.

    Which lines are sick is drawn from `seed`, always sparing each server's first two lines so
    the demo can send from the start.
    """
    rng = random.Random(seed)
    layout: list[tuple[str, int, int, list[str], dict[str, int]]] = [
        (
            "taipei",
            1,
            8,
            ["Chunghwa", "FarEasTone"],
            {"logout": 1, "offline": 1, "day0": 1, "finite": 2},
        ),
        (
            "kaohsiung",
            2,
            16,
            ["Chunghwa", "FarEasTone", "Taiwan Mobile"],
            {"logout": 1, "noreg": 1, "offline": 1, "day0": 1, "finite": 3},
        ),
        (
            "shenzhen",
            3,
            32,
            ["移动", "联通"],
            {"logout": 2, "noreg": 1, "offline": 2, "finite": 4, "fail": 1},
        ),
    ]
    servers = []
    for name, prefix, count, providers, sick in layout:
        lines: list[dict[str, Any]] = [
            {"line_id": f"G{prefix}{index + 1:02d}", "provider": providers[index % len(providers)]}
            for index in range(count)
        ]
        spare = list(range(2, count))
        rng.shuffle(spare)
        for role, how_many in sick.items():
            for _ in range(how_many):
                line = lines[spare.pop()]
                if role == "logout":
                    line["reg"] = "LOGOUT"  # a dead SIM: the module is up, the SIM is not
                elif role == "noreg":
                    line["reg"] = ""  # never registered
                elif role == "offline":
                    line.update(online=False, reg="")
                elif role == "day0":
                    line.update(remain_sms=rng.randrange(300, 900), day_remain_sms=0)
                elif role == "finite":
                    line.update(
                        remain_sms=rng.randrange(200, 1000), day_remain_sms=rng.randrange(20, 100)
                    )
                else:
                    line["fail_code"] = "331"  # no network service: every send fails
        _sim_operations(name, lines, rng)
        server: dict[str, Any] = {
            "name": name,
            "username": "root",
            "password": f"demo-{name}",
            "lines": lines,
            "send_delay": 1.0,
            "receipt_delay": 2.0,
            # A GoIP-8 per eight lines, as racks are built; a reboot takes its module a minute.
            "devices": [
                {
                    "name": f"{name}-{index // 8 + 1}",
                    "lines": [line["line_id"] for line in lines[index : index + 8]],
                }
                for index in range(0, len(lines), 8)
            ],
            "reboot_time": 60.0,
            "ussd_delay": 2.0,
        }
        if status_push_base:
            base = status_push_base.rstrip("/")
            server["status_push_url"] = f"{base}/hooks/goip/{name}/status?token=demo-hook-{name}"
            server["inbound_push_url"] = f"{base}/hooks/goip/{name}/inbound?token=demo-hook-{name}"
        servers.append(server)
    return {"servers": servers}


DEMO_USSD = {
    "taipei": ("*101#", "Your prepaid balance is NT${:.2f}, valid until 2027-06-30."),
    "kaohsiung": ("*101#", "Your prepaid balance is NT${:.2f}, valid until 2027-06-30."),
    "shenzhen": ("*100#", "尊敬的客户，您的账户余额为{:.2f}元，感谢使用。"),
}
"""The demo's carriers: the USSD code that asks for the balance and how they answer it."""


def _sim_operations(name: str, lines: list[dict[str, Any]], rng: random.Random) -> None:
    """What the demo shows of SIM operations: balances (some low, one the carrier answers
    with something else), signal of every strength, and among the dead SIMs one that a module
    reboot brings back (self-healing) while the others stay dead."""
    code, answer = DEMO_USSD[name]
    healed = False
    for index, line in enumerate(lines):
        balance = rng.choice([rng.uniform(80, 900), rng.uniform(80, 900), rng.uniform(3, 45)])
        line["ussd"] = {code: answer.format(balance)}
        line["csq"] = rng.choice([31, 27, 24, 21, 18, 14, 9, 4]) if index > 1 else 28
        if line.get("reg") in ("LOGOUT", ""):
            line["reboot_result"] = "unregistered"
            if not healed and line.get("online", True):
                line["reboot_result"] = "registered"
                healed = True
    lines[-1]["ussd"] = {code: "System busy, please try again later."}


def synthetic_spec(servers: int, lines_per_server: int, send_delay: float = 0.0) -> dict[str, Any]:
    """A large uniform fleet for benchmarks: s0001.., lines G101.., all registered, no limits."""
    return {
        "servers": [
            {
                "name": f"s{index + 1:04d}",
                "username": "root",
                "password": f"pw-s{index + 1:04d}",
                "send_delay": send_delay,
                "lines": [{"line_id": f"G{101 + line}"} for line in range(lines_per_server)],
            }
            for index in range(servers)
        ]
    }
