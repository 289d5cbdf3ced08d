"""/metrics: the cached text renderer gives what prometheus_client's generate_latest gives,
before and after changes, sliced or not.

Performance itself is measured in bench/, never asserted here."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from goipd.fleet.collector import FleetCollector
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.metrics.catalog import Metrics
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus

# Values of these change between two renders of the same registry.
MOVING = ("process_",)
ODD_LINE_IDS = ('G"1', "G\\2", "G\n3", "線路4", "G 5")


def _status(
    line: str,
    online: bool = True,
    reg: str = "LOGIN",
    total: int | None = None,
    day: int | None = None,
) -> LineStatus:
    return LineStatus(line, online, reg == "LOGIN", reg, total, day)


def _families(text: str) -> dict[str, str]:
    """Exposition text per family (HELP line to the next HELP line)."""
    families: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families, f"family {name} written twice"
            families[name] = []
        families[name].append(line)
    return {name: "".join(lines) for name, lines in families.items()}


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        if not family.name.startswith(MOVING)
        for s in family.samples
    }


def assert_same_exposition(metrics: Metrics) -> str:
    """metrics.render() is generate_latest(metrics.registry), family order aside."""
    fast = metrics.render().decode()
    reference = generate_latest(metrics.registry).decode()
    ours, theirs = _families(fast), _families(reference)
    assert list(ours) == list(theirs)
    for name, text in theirs.items():
        if not name.startswith(MOVING):
            assert ours[name] == text, f"{name} differs"
    assert _samples(fast) == _samples(reference)
    return fast


def _fleet() -> tuple[LineRegistry, Metrics]:
    registry = LineRegistry(["hq", "branch", "lab"])
    metrics = Metrics()
    FleetCollector(registry, metrics)
    metrics.add_servers(registry.servers)
    now = time.time()
    registry.apply_poll(
        "hq",
        [
            _status("G101"),
            _status("G102", total=856, day=2),
            _status("G103", reg="LOGOUT", total=0, day=1_234_567),
            _status("G104", online=False, reg=""),
            _status("G105", day=0),
        ],
        now,
    )
    registry.apply_poll("branch", [_status(line, total=5) for line in ODD_LINE_IDS], now)
    registry.apply_failure("lab", ErrorReason.TIMEOUT, "querylines: no reply", now)
    metrics.poll_duration.labels("hq").observe(0.02)
    metrics.poll_duration.labels("branch").observe(7.5)
    metrics.poll_errors.labels("lab", "timeout").inc()
    metrics.sms_sent.labels("goip", "hq", "G101", "succeeded").inc(3)
    metrics.cms_errors.labels("hq", 'G"1', "331").inc()
    metrics.messages_accepted.inc(12)
    metrics.queue_messages.labels("queued").set(4)
    metrics.queue_oldest_age.set(1.5e9)
    return registry, metrics


def test_fast_exposition_equals_prometheus_client_before_and_after_changes() -> None:
    registry, metrics = _fleet()
    text = assert_same_exposition(metrics)
    assert 'goipd_line_online{line="G\\"1",server="branch"} 1.0' in text
    assert 'goipd_line_online{line="G\\n3",server="branch"} 1.0' in text
    assert "goipd_line_remaining_sms" in text and 'line="G101"' in text
    assert_same_exposition(metrics)  # from the caches, unchanged

    now = time.time()
    registry.apply_poll(
        "hq",
        [
            _status("G101", reg="LOGOUT"),  # state change
            _status("G102", total=855, day=1),  # quota burn
            _status("G103", total=3, day=None),  # limited -> unlimited
            # G104 is gone, G105 too; G106 appears
            _status("G106", total=10, day=10),
        ],
        now + 1,
    )
    hq_g102 = registry.line("hq", "G102")
    assert hq_g102 is not None
    hq_g102.day_remain_sms = 0  # the router's local decrement, not a poll
    registry.note_send_result(
        "branch", "G 5", line_error=True, code="331", threshold=1, cooldown=60.0, now=now
    )
    registry.set_manual("branch", "G\\2", ManualQuarantine("swap SIM", now))
    registry.set_servers(["hq", "branch"])  # lab removed
    metrics.remove_server("lab")
    metrics.poll_duration.labels("hq").observe(0.3)
    metrics.sms_sent.labels("goip", "hq", "G101", "succeeded").inc()
    metrics.sms_sent.labels("goip", "hq", "G102", "failed").inc()
    text = assert_same_exposition(metrics)
    assert 'server="lab"' not in text
    assert 'line="G104"' not in text and 'line="G105"' not in text
    assert 'goipd_line_quarantined{kind="errors",line="G 5",server="branch"} 1.0' in text
    assert 'goipd_line_quarantined{kind="manual",line="G\\\\2",server="branch"} 1.0' in text

    # An auto quarantine that runs out changes healthy with no change to the line itself.
    line = registry.line("branch", "G 5")
    assert line is not None
    line.quarantined_until = time.time() - 1
    assert_same_exposition(metrics)
    registry.set_manual("branch", "G\\2", None)
    assert_same_exposition(metrics)


async def test_sliced_render_equals_render() -> None:
    _, metrics = _fleet()
    sliced = await metrics.render_async(slice_seconds=0.0)
    assert _samples(sliced.decode()) == _samples(metrics.render().decode())


@pytest.mark.parametrize("slices", [0.0, 0.005])
async def test_concurrent_sliced_scrapes_agree(slices: float) -> None:
    _, metrics = _fleet()
    first, second = await asyncio.gather(
        metrics.render_async(slice_seconds=slices), metrics.render_async(slice_seconds=slices)
    )
    assert _samples(first.decode()) == _samples(second.decode())
