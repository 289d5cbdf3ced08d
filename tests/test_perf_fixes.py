"""The faster paths of issue #8 give the same answers as the plain ones they replace.

Performance itself is measured in bench/, never asserted here.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from goipd.config import parse_settings
from goipd.dispatch.dispatcher import _OutcomeWriter
from goipd.dispatch.routing import LineChoice, Router
from goipd.fleet.collector import FleetCollector
from goipd.fleet.poller import FleetPoller
from goipd.fleet.registry import LineRegistry, ManualQuarantine
from goipd.ledger.sqlite import SqliteLedger
from goipd.metrics.catalog import Metrics
from goipd.model import Claim, LedgerError, NewMessage, Outcome, State
from goipd.runtime.logs import REDACTED, SecretScrubber
from goipd.upstream.errors import ErrorReason
from goipd.upstream.goip import LineStatus, _strip_trailing_commas
from tests.conftest import daemon_config, eventually
from tests.test_routing import NOW as ROUTING_NOW
from tests.test_routing import make_router
from tests.test_routing import status as routing_status

# --- /metrics: the cached text renderer against prometheus_client's own ----------------------

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


async def test_metrics_endpoint_gzips_when_asked(
    simulator: Any, daemon_factory: Any, tmp_path: Path
) -> None:
    sim = await simulator({"servers": [{"name": "hq", "username": "root", "password": "pw-hq"}]})
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))

    async def warmed_up() -> bool:
        # Rendered once in the background after the first poll round, before any scrape.
        return "hq" in daemon.fleet_collector._servers

    await eventually(warmed_up, 5.0, "the /metrics text rendered after the first poll round")
    url = f"http://127.0.0.1:{daemon.port}/metrics"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Vary"] == "Accept-Encoding"
            zipped = gzip.decompress(await resp.read()).decode()
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            plain = await resp.text()
        async with session.get(url, headers={"Accept-Encoding": "gzip;q=0, br"}) as resp:
            assert "Content-Encoding" not in resp.headers
    for text in (zipped, plain):
        assert 'goipd_server_up{server="hq"} 1.0' in text
        assert text.startswith("# HELP ")


@pytest.mark.parametrize("slices", [0.0, 0.005])
async def test_concurrent_sliced_scrapes_agree(slices: float) -> None:
    _, metrics = _fleet()
    first, second = await asyncio.gather(
        metrics.render_async(slice_seconds=slices), metrics.render_async(slice_seconds=slices)
    )
    assert _samples(first.decode()) == _samples(second.decode())


# --- accept: the flood guard decides inside the accept transaction ---------------------------


async def test_identical_requests_in_flight_together_are_accepted_once(
    simulator: Any, daemon_factory: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await simulator({"servers": [{"name": "hq", "username": "root", "password": "pw-hq"}]})
    config = daemon_config(sim, ["hq"], tmp_path, api={"duplicate_window": "10m"})
    daemon = await daemon_factory(config)
    url = f"http://127.0.0.1:{daemon.port}/api/v1/messages"
    body = {"to": ["+886912345678"], "text": "your code is 4321"}

    async def post() -> tuple[int, Any]:
        async with http.post(url, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    answers = await asyncio.gather(*(post() for _ in range(6)))
    accepted = [reply for status, reply in answers if status == 202]
    assert len(accepted) == 1, answers
    first = accepted[0]["id"]
    for status, reply in answers:
        if status != 202:
            assert status == 409
            assert reply["duplicate_of"] == first
            assert reply["detail"] == (
                f"the same text went to +886912345678 less than 10m ago (message {first}); "
                "the flood guard refuses repeats (api.duplicate_window)"
            )
    stored = await daemon.ledger.list_messages(None, None, 10, None)
    assert [m.id for m in stored] == [first]


# --- polling: the servers' polls are spread over the interval --------------------------------


async def test_scheduled_polls_are_spread_evenly_over_the_interval() -> None:
    servers = "\n".join(
        f"  - {{name: s{i:03d}, url: 'http://127.0.0.1:9', username: root, password: pw, "
        "poll_interval: 1h, timeout: 5s}"
        for i in range(200)
    )
    settings = parse_settings(f"polling: {{jitter: 0.1}}\nservers:\n{servers}\n")
    registry = LineRegistry()
    poller = FleetPoller(registry, Metrics(), settings.polling)
    poller.configure({s.name: s for s in settings.servers})
    started = time.time()
    poller.start()
    try:
        assert poller._scheduler is not None
        offsets = sorted(
            job.next_run_time.timestamp() - started for job in poller._scheduler.get_jobs()
        )
    finally:
        await poller.stop()
    interval = 3600.0
    assert len(offsets) == 200
    assert offsets[0] > 0 and offsets[-1] <= interval + 1
    # Evenly: no two servers share a second, no stretch of the interval goes unpolled.
    gaps = [b - a for a, b in zip([0.0, *offsets], [*offsets, interval], strict=True)]
    assert max(gaps) < 3 * interval / 200
    assert min(gaps[1:-1]) > interval / 200 / 3


# --- GoIP replies: the regex comma stripper does what the character walk did -----------------


def _strip_by_walking(text: str) -> str:
    """The character-by-character stripper the regex replaced, kept as its specification."""
    out: list[str] = []
    in_string = escaped = False
    pending_comma: int | None = None
    for char in text:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char in "]}" and pending_comma is not None:
            out[pending_comma] = ""
        if char == ",":
            pending_comma = len(out)
        elif not char.isspace():
            pending_comma = None
        if char == '"':
            in_string = True
        out.append(char)
    return "".join(out)


@pytest.mark.parametrize("backslash", ["\\", ""])
@given(data=st.data())
def test_regex_comma_stripper_equals_the_character_walk(
    backslash: str, data: st.DataObject
) -> None:
    # With and without backslashes: the stripper takes a shortcut when there are none.
    alphabet = st.sampled_from(list(',]}[{" \n\t\u3000\x85a1:' + backslash))
    text = data.draw(st.text(alphabet=alphabet, max_size=60))
    assert _strip_trailing_commas(text) == _strip_by_walking(text)


@given(st.text(max_size=40))
def test_regex_comma_stripper_equals_the_character_walk_on_any_text(text: str) -> None:
    assert _strip_trailing_commas(text) == _strip_by_walking(text)


# --- logs: one compiled pattern scrubs every secret ------------------------------------------


def test_scrubber_pattern_redacts_every_secret_longest_first() -> None:
    scrubber = SecretScrubber()
    secrets = [f"pw-{i:04d}-{'x' * (i % 7)}" for i in range(2000)]
    special = ["a.b*c(d)", "hook-token-0123", "hook-token-0123456789", "[x]\\y", "短い秘密の鍵"]
    scrubber.set_secrets([*secrets, *special, "abc"])  # shorter than 4: never a secret
    text = "|".join(["pw-0005-xxxxx", "a.b*c(d)", "hook-token-0123456789", "[x]\\y", "abc"])
    assert scrubber.scrub(text) == "|".join([REDACTED] * 4 + ["abc"])
    # The longest secret wins where one contains another; the shorter alone still goes.
    assert scrubber.scrub("t=hook-token-0123456789;s=hook-token-0123;") == (
        f"t={REDACTED};s={REDACTED};"
    )
    assert scrubber.scrub("a.bxc(d) 短い秘密の鍵!") == f"a.bxc(d) {REDACTED}!"
    event = scrubber(None, "info", {"event": "x", "detail": ["pw-1999-xxxx", {"k": 12}]})
    assert event == {"event": "x", "detail": [REDACTED, {"k": 12}]}
    scrubber.set_secrets([])
    assert scrubber.scrub("pw-0005-xxxxx") == "pw-0005-xxxxx"


# --- routing: only servers whose lines changed are re-synced ---------------------------------


def _lru_keys(router: Router) -> tuple[set[tuple[str, str]], dict[str, set[tuple[str, str]]]]:
    return set(router._fleet_lru), {name: set(lru) for name, lru in router._server_lru.items()}


def test_router_follows_lines_and_servers_incrementally() -> None:
    router, registry = make_router(
        {"hq": [routing_status("G1"), routing_status("G2")], "b2": [routing_status("X1")]},
        rate=600,
    )
    targets = router.targets_for("+886912345678")
    first = router.choose(targets, ROUTING_NOW)
    assert isinstance(first, LineChoice)
    router.record_use(first, 1, ROUTING_NOW)
    assert _lru_keys(router) == (
        {("hq", "G1"), ("hq", "G2"), ("b2", "X1")},
        {"hq": {("hq", "G1"), ("hq", "G2")}, "b2": {("b2", "X1")}},
    )
    # A new line with the most quota goes to the front; a line that goes stays (parked).
    registry.apply_poll(
        "hq", [routing_status("G1"), routing_status("G3", remain=1000)], ROUTING_NOW
    )
    assert router.choose(targets, ROUTING_NOW) == LineChoice("hq", "G3", None, 1)
    assert ("hq", "G2") in router._fleet_lru
    # Polls that change no line id leave the orders alone, whatever else they change.
    order = list(router._fleet_lru)
    registry.apply_poll(
        "hq", [routing_status("G1", reg="LOGOUT"), routing_status("G3", remain=999)], ROUTING_NOW
    )
    router.choose(targets, ROUTING_NOW)
    assert list(router._fleet_lru)[: len(order)] == order
    # A removed server and its send memory are forgotten; the rest is kept.
    registry.set_servers(["hq"])
    assert router.choose(targets, ROUTING_NOW) == LineChoice("hq", "G3", None, 1)
    assert _lru_keys(router) == (
        {("hq", "G1"), ("hq", "G2"), ("hq", "G3")},
        {"hq": {("hq", "G1"), ("hq", "G2"), ("hq", "G3")}},
    )
    assert all(key[0] == "hq" for key in router._recent)
    # Back under the same name: its lines come back as new ones.
    registry.set_servers(["hq", "b2"])
    registry.apply_poll("b2", [routing_status("X2")], ROUTING_NOW)
    router.choose(targets, ROUTING_NOW)
    assert _lru_keys(router)[1]["b2"] == {("b2", "X2")}


# --- dispatch: outcomes of sends that finish together are one ledger write -------------------


async def test_outcomes_recorded_together_are_one_write(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "goipd.db")
    await ledger.open()
    try:
        message = NewMessage(
            text="hi", recipients=("+886900000001", "+886900000002"), segments=1, encoding="GSM-7"
        )
        ids = [r.id for r in (await ledger.accept(message, 1.0)).message.recipients]
        await ledger.claim([Claim(rid, "goip", "hq", "G1") for rid in ids], 1.0)
        writer = _OutcomeWriter(ledger, lambda: 2.0)
        commits = ledger.commits
        await asyncio.gather(
            *(writer.record([Outcome(rid, State.SUBMITTED, task_id="9")]) for rid in ids)
        )
        assert ledger.commits == commits + 1
        assert (await ledger.counts())[State.SUBMITTED] == 2
    finally:
        await ledger.close()
    # The ledger's error reaches every caller of the write.
    results = await asyncio.gather(
        *(writer.record([Outcome(rid, State.SENT)]) for rid in ids), return_exceptions=True
    )
    assert all(isinstance(r, LedgerError) for r in results), results
