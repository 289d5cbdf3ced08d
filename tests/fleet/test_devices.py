"""Signal and SIM identity from the GoIP devices: a status page's ports become the lines the
config maps them to; a failed poll is the device's error and never the lines' state; readings
go stale after three poll intervals and their gauges disappear; a reload keeps what unchanged
devices read."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr

from goipd.config import Device, Server, parse_settings
from goipd.fleet.devices import (
    STALE_POLLS,
    DeviceLine,
    DevicePoll,
    DevicePoller,
    StatusSource,
    changes,
    placeholders,
    readings,
)
from goipd.fleet.registry import LineRegistry
from goipd.fleet.upkeep_metrics import UpkeepCollector
from goipd.metrics.catalog import Metrics
from goipd.upstream.errors import ErrorReason, UpstreamError
from goipd.upstream.goip import LineStatus
from goipd.upstream.goip_device import DeviceStatus, parse_status_xml
from goipd.web.lines import device_json, line_json
from tests.helpers.checks import sample

RED_N = '<font color="#FF0000">N</font>'


def port_xml(
    port: int,
    *,
    csq: int = 20,
    operator: str = "Chunghwa",
    sim: bool = True,
    module: bool = True,
    registered: bool = True,
) -> str:
    flag = {True: "Y", False: RED_N}
    values = {
        "module_status": f'<a href="?type=list&down=1&line={port}">{flag[module]}</a>',
        "gsm_sim": flag[sim],
        "gsm_status": flag[registered],
        "gsm_signal": str(csq),
        "gsm_cur_oper": operator,
        "sim_remain": "NO LIMIT",
    }
    return "".join(
        f"<l{port}_{name}>{value}</l{port}_{name}>" if value else f"<l{port}_{name}/>"
        for name, value in values.items()
    )


def page(*ports: str) -> DeviceStatus:
    return parse_status_xml("<status>\n" + "\n".join(ports) + "\n</status>\n")


DEVICE = Device(
    name="goip-a",
    url="http://127.0.0.1:9",
    username="admin",
    password=SecretStr("pw"),
    lines={1: "G101", 2: "G102", 3: "G103"},
    poll_interval=10.0,
    timeout=2.0,
)


def settings_servers(devices: str) -> dict[str, Server]:
    settings = parse_settings(
        "servers:\n"
        "  - name: hq\n"
        "    url: 'http://127.0.0.1:9'\n"
        "    username: u\n"
        "    password: p\n"
        f"    devices: {devices}\n",
        environ={},
    )
    return {server.name: server for server in settings.servers}


TWO_DEVICES = (
    "[{name: goip-a, url: 'http://127.0.0.1:9', password: pw, poll_interval: 10s,"
    " timeout: 2s, lines: {1: G101, 2: G102}},"
    " {name: goip-b, url: 'http://127.0.0.1:9', password: pw, poll_interval: 10s,"
    " timeout: 2s, lines: {1: G103}}]"
)


# --- the pure parts -----------------------------------------------------------------------------


def test_each_port_becomes_the_line_it_is_mapped_to() -> None:
    status = page(
        port_xml(1, csq=31, operator="AT&T"),
        port_xml(2, csq=99, sim=False, registered=False, operator=""),
    )
    poll = DevicePoll("goip-a", at=100.0, ok_at=100.0)
    found = readings("hq", DEVICE, status, poll, 100.0)
    assert set(found) == {"G101", "G102", "G103"}
    g101 = found["G101"]
    assert (g101.device, g101.port, g101.csq, g101.signal_dbm) == ("goip-a", 1, 31, -51)
    # A raw & in a value, HTML around a flag: read as the device shows them.
    assert (g101.operator, g101.sim_present, g101.module_on, g101.gsm_registered) == (
        "AT&T",
        True,
        True,
        True,
    )
    assert g101.seen_at == 100.0 and g101.poll is poll
    g102 = found["G102"]
    # CSQ 99 is unknown: no dBm; a red N is no.
    assert (g102.csq, g102.signal_dbm, g102.sim_present, g102.operator) == (None, None, False, None)
    # The page has no port 3: nothing is known of G103.
    g103 = found["G103"]
    assert (g103.port, g103.csq, g103.sim_present, g103.seen_at) == (3, None, None, None)


def test_readings_are_fresh_for_three_poll_intervals() -> None:
    line = readings("hq", DEVICE, page(port_xml(1)), DevicePoll("goip-a"), 1000.0)["G101"]
    assert line.fresh(1000.0 + STALE_POLLS * DEVICE.poll_interval)
    assert not line.fresh(1000.0 + STALE_POLLS * DEVICE.poll_interval + 1)
    never = DeviceLine("hq", "G101", "goip-a", 1, 10.0, DevicePoll("goip-a"))
    assert not never.fresh(0.0)


def test_a_reload_keeps_what_a_port_still_mapped_to_its_line_read() -> None:
    poll = DevicePoll("goip-a", at=5.0, ok_at=5.0)
    before = {
        ("hq", line): entry
        for line, entry in readings("hq", DEVICE, page(port_xml(1), port_xml(2)), poll, 5.0).items()
    }
    moved = Device(
        name="goip-a",
        url=DEVICE.url,
        username="admin",
        password=DEVICE.password,
        lines={1: "G101", 2: "G109"},
        poll_interval=30.0,
    )
    found = placeholders("hq", moved, DevicePoll("goip-a"), before)
    assert found["G101"].csq == 20 and found["G101"].interval == 30.0
    # Port 2 has another line now: nothing of the old one's SIM carries over.
    assert found["G109"].csq is None and found["G109"].seen_at is None


def test_changes_name_identity_and_module_not_signal() -> None:
    poll = DevicePoll("goip-a")
    first = readings("hq", DEVICE, page(port_xml(1, csq=20)), poll, 1.0)["G101"]
    weaker = readings("hq", DEVICE, page(port_xml(1, csq=3)), poll, 2.0)["G101"]
    pulled = readings(
        "hq", DEVICE, page(port_xml(1, sim=False, registered=False, operator="")), poll, 3.0
    )["G101"]
    assert changes(first, weaker) == {}
    assert changes(first, pulled) == {
        "sim_present": False,
        "gsm_registered": False,
        "operator": None,
    }
    assert changes(None, first) == {}


# --- the poller ---------------------------------------------------------------------------------


class FakeDevice:
    """A device whose next answers the test sets: a page, or an error."""

    def __init__(self) -> None:
        self.answer: DeviceStatus | UpstreamError = page(port_xml(1), port_xml(2))
        self.calls = 0

    async def status(self) -> DeviceStatus:
        self.calls += 1
        if isinstance(self.answer, UpstreamError):
            raise self.answer
        return self.answer


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fleet(lines: tuple[str, ...] = ("G101", "G102", "G103")) -> LineRegistry:
    registry = LineRegistry(["hq"])
    registry.apply_poll(
        "hq", [LineStatus(line, True, True, "LOGIN", None, None) for line in lines], 1.0
    )
    return registry


def poller(
    registry: LineRegistry,
    clock: Clock,
    polls: Callable[[str], bool] = lambda server: True,
) -> tuple[DevicePoller, dict[str, FakeDevice], Metrics]:
    fakes: dict[str, FakeDevice] = {}

    def client_for(device: Device) -> StatusSource:
        return fakes.setdefault(device.name, FakeDevice())

    metrics = Metrics()
    found = DevicePoller(
        registry, metrics, polls, clock=clock, rng=random.Random(7), client_for=client_for
    )
    found.configure(settings_servers(TWO_DEVICES))
    return found, fakes, metrics


def api_device(registry: LineRegistry, line_id: str, now: float) -> Any:
    """The line's `device` as GET /api/v1/lines shows it."""
    line = registry.line("hq", line_id)
    assert line is not None
    return line_json(line, now, registry)["device"]


def scrape(registry: LineRegistry, clock: Clock, metrics: Metrics) -> str:
    collectors = CollectorRegistry()
    collectors.register(UpkeepCollector(registry, clock))
    return generate_latest(collectors).decode() + generate_latest(metrics.registry).decode()


async def test_a_poll_stores_each_ports_readings_on_its_line() -> None:
    registry, clock = fleet(), Clock()
    devices, fakes, metrics = poller(registry, clock)
    # Configured lines are there before any poll, with nothing read.
    assert registry.devices[("hq", "G103")].device == "goip-b"
    assert registry.devices[("hq", "G101")].seen_at is None
    fakes["goip-a"].answer = page(port_xml(1, csq=4, operator="FarEasTone"), port_xml(2, csq=99))
    poll = await devices.poll("hq", "goip-a")
    assert poll is not None and poll.ok
    g101 = registry.devices[("hq", "G101")]
    assert (g101.signal_dbm, g101.operator, g101.seen_at) == (-105, "FarEasTone", 1000.0)
    text = scrape(registry, clock, metrics)
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") == -105.0
    assert sample(text, "goipd_line_signal_csq", server="hq", line="G101") == 4.0
    assert sample(text, "goipd_line_sim_present", server="hq", line="G101") == 1.0
    assert sample(text, "goipd_line_module_on", server="hq", line="G101") == 1.0
    assert (
        sample(text, "goipd_line_operator_info", server="hq", line="G101", operator="FarEasTone")
        == 1.0
    )
    # CSQ 99: no signal series, the rest is known.
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G102") is None
    assert sample(text, "goipd_line_sim_present", server="hq", line="G102") == 1.0
    assert sample(text, "goipd_device_up", server="hq", device="goip-a") == 1.0
    # goip-b was never polled: no up series yet.
    assert sample(text, "goipd_device_up", server="hq", device="goip-b") is None
    assert (
        sample(text, "goipd_device_polls_total", server="hq", device="goip-a", result="ok") == 1.0
    )
    reply = api_device(registry, "G101", clock.now)
    assert reply == {
        "device": "goip-a",
        "port": 1,
        "signal_dbm": -105,
        "weak_signal": True,
        "csq": 4,
        "operator": "FarEasTone",
        "sim_present": True,
        "module_on": True,
        "gsm_registered": True,
        "seen_at": 1000.0,
        "stale": False,
        "error": None,
    }


async def test_a_failed_poll_is_the_devices_error_never_the_lines_state() -> None:
    registry, clock = fleet(), Clock()
    devices, fakes, metrics = poller(registry, clock)
    await devices.poll("hq", "goip-a")
    before = [
        (line.online, line.registered, line.healthy, line.last_change) for line in registry.lines()
    ]
    clock.now += 10
    fakes["goip-a"].answer = UpstreamError(ErrorReason.AUTH, "device goip-a status: HTTP 401")
    poll = await devices.poll("hq", "goip-a")
    assert poll is not None and poll.ok is False and poll.failures == 1
    after = [
        (line.online, line.registered, line.healthy, line.last_change) for line in registry.lines()
    ]
    assert after == before
    g101 = registry.devices[("hq", "G101")]
    # The last readings stay, with the device's error beside them.
    assert g101.csq == 20 and g101.poll.reason == "auth"
    reply = api_device(registry, "G101", clock.now)
    assert reply["signal_dbm"] == -73
    assert reply["error"] == {
        "reason": "auth",
        "detail": "device goip-a status: HTTP 401",
        "at": 1010.0,
        "last_ok": 1000.0,
    }
    text = scrape(registry, clock, metrics)
    assert sample(text, "goipd_device_up", server="hq", device="goip-a") == 0.0
    assert (
        sample(text, "goipd_device_polls_total", server="hq", device="goip-a", result="auth") == 1.0
    )
    # Still fresh: one missed poll leaves no gap.
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") == -73.0

    # Three intervals on, the readings are stale: shown, no longer exported.
    clock.now = 1000.0 + STALE_POLLS * 10.0 + 1
    fakes["goip-a"].answer = UpstreamError(ErrorReason.TIMEOUT, "device goip-a status: no reply")
    await devices.poll("hq", "goip-a")
    text = scrape(registry, clock, metrics)
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") is None
    assert sample(text, "goipd_line_sim_present", server="hq", line="G101") is None
    assert sample(text, "goipd_device_up", server="hq", device="goip-a") == 0.0
    reply = api_device(registry, "G101", clock.now)
    assert reply["stale"] is True and reply["csq"] == 20
    assert reply["error"]["reason"] == "timeout"
    assert registry.devices[("hq", "G101")].poll.failures == 2

    # Back: fresh readings, the error gone.
    fakes["goip-a"].answer = page(port_xml(1, csq=25), port_xml(2))
    await devices.poll("hq", "goip-a")
    reply = api_device(registry, "G101", clock.now)
    assert (reply["csq"], reply["stale"], reply["error"]) == (
        25,
        False,
        None,
    )


async def test_gauges_only_for_owned_servers_and_reported_lines() -> None:
    registry, clock = fleet(("G101",)), Clock()
    devices, _, metrics = poller(registry, clock)
    await devices.poll("hq", "goip-a")
    text = scrape(registry, clock, metrics)
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") == -73.0
    # G102 is on port 2, but the SMS Server does not report it.
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G102") is None
    g101 = registry.line("hq", "G101")
    assert g101 is not None and line_json(g101, clock.now, None)["device"] is None
    registry.servers["hq"].owned = False
    text = scrape(registry, clock, metrics)
    assert sample(text, "goipd_line_signal_dbm", server="hq", line="G101") is None
    assert sample(text, "goipd_device_up", server="hq", device="goip-a") is None


async def test_a_line_without_a_device_has_no_device_field() -> None:
    registry, clock = fleet(("G101", "G104")), Clock()
    poller(registry, clock)
    reply = api_device(registry, "G104", clock.now)
    assert reply is None


async def test_devices_of_a_server_this_instance_does_not_poll_are_left_alone() -> None:
    registry, clock = fleet(), Clock()
    devices, fakes, _ = poller(registry, clock, polls=lambda server: False)
    slot = devices._slots[("hq", "goip-a")]
    await devices.poll_slot(slot)
    assert fakes["goip-a"].calls == 0
    assert registry.devices[("hq", "G101")].poll.ok is None


async def test_a_reload_keeps_unchanged_devices_and_drops_removed_ones() -> None:
    registry, clock = fleet(), Clock()
    devices, fakes, _ = poller(registry, clock)
    await devices.poll("hq", "goip-a")
    await devices.poll("hq", "goip-b")
    kept_client = devices._slots[("hq", "goip-a")].client
    devices.configure(
        settings_servers(
            "[{name: goip-a, url: 'http://127.0.0.1:9', password: pw, poll_interval: 10s,"
            " timeout: 2s, lines: {1: G101, 2: G102}}]"
        )
    )
    assert devices.devices == [("hq", "goip-a")]
    assert devices._slots[("hq", "goip-a")].client is kept_client
    assert registry.devices[("hq", "G101")].csq == 20
    assert ("hq", "G103") not in registry.devices
    devices.configure({})
    assert registry.devices == {} and devices.devices == []


async def test_the_loop_polls_each_device_and_a_crash_reaches_the_supervisor() -> None:
    registry, clock = fleet(), Clock()
    fakes: dict[str, FakeDevice] = {}

    def client_for(device: Device) -> StatusSource:
        return fakes.setdefault(device.name, FakeDevice())

    devices = DevicePoller(
        registry, Metrics(), lambda server: True, clock=clock, client_for=client_for
    )
    fast = TWO_DEVICES.replace("poll_interval: 10s", "poll_interval: 1s").replace(
        "timeout: 2s", "timeout: 500ms"
    )
    devices.configure(settings_servers(fast))
    task = asyncio.create_task(devices.run())
    try:
        async with asyncio.timeout(5):
            while not all(fake.calls >= 2 for fake in fakes.values()) or len(fakes) < 2:
                await asyncio.sleep(0.05)
        assert registry.devices[("hq", "G103")].seen_at == clock.now

        class Broken(FakeDevice):
            async def status(self) -> DeviceStatus:
                raise RuntimeError("a bug")

        devices._slots[("hq", "goip-b")].client = Broken()
        with pytest.raises(RuntimeError, match="a bug"):
            async with asyncio.timeout(5):
                await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("csq", "weak"), [(None, False), (4, True), (5, True), (6, False), (31, False)]
)
def test_weak_signal_is_csq_5_and_below(csq: int | None, weak: bool) -> None:
    line = DeviceLine("hq", "G101", "goip-a", 1, 60.0, DevicePoll("goip-a"), csq=csq)
    assert device_json(line, 0.0)["weak_signal"] is weak
