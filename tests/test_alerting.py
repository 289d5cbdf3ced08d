"""Alertmanager → SMS: rendering, parsing, de-duplication and rate limit as pure functions; the
receiver over real HTTP against goipd and the simulated fleet; and end to end with a real
Alertmanager (Debian's prometheus-alertmanager) posting to goipd on loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from goipd.accept.alerts import AlertGate, NotificationError, parse_notification, render
from goipd.app import Daemon
from goipd.config import (
    AlertingSettings,
    ConfigError,
    parse_settings,
)
from goipd.sim.goip import RunningSimulator
from goipd.upstream import segments
from tests.conftest import API_TOKEN, control, daemon_config, eventually, fleet_spec, sample
from tests.test_crash import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

SIM_DEAD = {
    "alertname": "GoipdSimDead",
    "server": "hq",
    "line": "G101",
    "severity": "warning",
    "job": "goipd",
    "instance": "127.0.0.1:8080",
}


def alert(status: str = "firing", summary: str | None = None, **labels: str) -> dict[str, Any]:
    annotations = {} if summary is None else {"summary": summary}
    return {
        "status": status,
        "labels": labels or dict(SIM_DEAD),
        "annotations": annotations,
        "startsAt": "2026-11-20T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "c6a0b4b3e5c1f2a7",
    }


def payload(
    *alerts: dict[str, Any],
    status: str = "firing",
    receiver: str = "oncall",
    group_key: str = '{}:{alertname="GoipdSimDead"}',
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": "GoipdSimDead"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts) or [alert(summary="SIM of line hq/G101 not registered")],
    }
    return body | extra


# --- rendering ----------------------------------------------------------------------------------


def rendered(body: dict[str, Any], max_segments: int = 2, max_chars: int = 1530) -> str:
    return render(parse_notification(body), max_segments, max_chars)


def test_firing_notification_with_one_alert() -> None:
    assert rendered(payload()) == (
        "[FIRING:1] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered"
    )


def test_group_labels_come_first_and_background_labels_only_when_grouped() -> None:
    body = payload(groupLabels={"alertname": "GoipdSimDead", "server": "hq", "job": "goipd"})
    assert rendered(body) == (
        "[FIRING:1] GoipdSimDead server=hq job=goipd line=G101: SIM of line hq/G101 not registered"
    )


def test_several_alerts_count_the_notifications_status_and_show_the_first() -> None:
    body = payload(
        alert("resolved", "old one", **{**SIM_DEAD, "line": "G100"}),
        alert("firing", "SIM of line hq/G101 not registered"),
        alert("firing", "SIM of line hq/G102 not registered", **{**SIM_DEAD, "line": "G102"}),
    )
    assert rendered(body) == (
        "[FIRING:2] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered (+1 more)"
    )


def test_resolved_notification() -> None:
    body = payload(
        alert("resolved", "SIM of line hq/G101 not registered"),
        alert("resolved", "SIM of line hq/G102 not registered", **{**SIM_DEAD, "line": "G102"}),
        status="resolved",
    )
    assert rendered(body) == (
        "[RESOLVED:2] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered "
        "(+1 more)"
    )


def test_many_alerts_and_truncated_alerts_are_counted() -> None:
    alerts = [alert(summary=f"line G{i}", **{**SIM_DEAD, "line": f"G{i}"}) for i in range(100)]
    body = payload(*alerts, truncatedAlerts=50)
    text = rendered(body)
    assert text == "[FIRING:150] GoipdSimDead line=G0 server=hq: line G0 (+149 more)"


def test_summary_falls_back_to_common_annotations_then_description() -> None:
    bare = alert()
    assert rendered(payload(bare, commonAnnotations={"summary": "common"})).endswith(": common")
    described = alert() | {"annotations": {"description": "the long story"}}
    assert rendered(payload(described)).endswith(": the long story")
    assert rendered(payload(bare)) == "[FIRING:1] GoipdSimDead line=G101 server=hq"


def test_long_gsm_summary_is_cut_to_two_segments_with_a_gsm_ellipsis() -> None:
    body = payload(alert(summary="the SIM card stopped answering " * 40), alert())
    text = rendered(body, max_segments=2)
    info = segments.analyse(text)
    # "…" would have turned the whole SMS into UCS-2 (134 characters instead of 306).
    assert info.encoding == "GSM-7" and info.segments == 2
    assert info.units > 290
    assert text.startswith("[FIRING:2] GoipdSimDead line=G101 server=hq: the SIM card stopped")
    assert text.endswith("... (+1 more)")


def test_unicode_summary_respects_ucs2_limits() -> None:
    body = payload(alert(summary="線路G101的SIM卡未註冊，請盡快更換。" * 20))
    for max_segments, limit in ((1, 70), (2, 2 * 67), (3, 3 * 67)):
        text = rendered(body, max_segments=max_segments)
        info = segments.analyse(text)
        assert info.encoding == "UCS-2"
        assert info.segments == max_segments and limit - 2 <= info.units <= limit, text
        assert text.endswith("…")


def test_labels_give_way_before_the_summary_is_cut_short() -> None:
    labels = {"alertname": "GoipdSimDead", "server": "hq", "line": "G101"}
    labels |= {f"label{i}": "v" * 30 for i in range(5)}
    body = payload(alert(summary="SIM of line hq/G101 not registered for 5 minutes", **labels))
    text = rendered(body, max_segments=1)
    assert len(text) <= 160
    # The summary is whole; the labels that did not fit are left out from the last one.
    assert text.startswith("[FIRING:1] GoipdSimDead label0=")
    assert text.endswith(": SIM of line hq/G101 not registered for 5 minutes")
    assert "label4" not in text


def test_long_label_values_are_shortened_without_leaving_gsm_7() -> None:
    body = payload(alert(summary="s", **{**SIM_DEAD, "line": "L" * 100}))
    text = rendered(body)
    assert f" line={'L' * 29}... " in text and segments.is_gsm7(text)
    body = payload(alert(summary="s", **{**SIM_DEAD, "line": "線" * 100}))
    assert f" line={'線' * 31}… " in rendered(body)


def test_text_is_one_line_without_control_characters_or_lone_surrogates() -> None:
    body = payload(alert(summary="first line\n\tsecond\x07line \ud800 end  "))
    assert rendered(body).endswith(": first line second line \ufffd end")


def test_an_absurd_alert_name_is_cut_to_fit() -> None:
    body = payload(alert(summary="x", alertname="A" * 500))
    text = rendered(body, max_segments=1)
    assert text.startswith("[FIRING:1] AAAA") and text.endswith("...")
    # "[" and "]" are GSM-7 extension characters: two septets each.
    assert len(text) == 158 and segments.analyse(text).units == 160
    assert rendered(body, max_segments=2, max_chars=50) == "[FIRING:1] " + "A" * 36 + "..."


_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=400)


@settings(max_examples=150, deadline=None)
@given(
    name=_ANY_TEXT,
    value=_ANY_TEXT,
    summary=_ANY_TEXT,
    max_segments=st.integers(1, 10),
    max_chars=st.integers(30, 1600),
)
def test_rendering_always_fits(
    name: str, value: str, summary: str, max_segments: int, max_chars: int
) -> None:
    body = payload(alert(summary=summary, alertname=name, key=value))
    text = rendered(body, max_segments, max_chars)
    assert text.startswith("[FIRING:1] ")
    assert len(text) <= max_chars
    assert segments.analyse(text).segments <= max_segments
    assert not any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text)
    text.encode("utf-8")


# --- parsing ------------------------------------------------------------------------------------

BAD: list[tuple[Any, str]] = [
    ([], "expected a JSON object, got an array"),
    (
        payload() | {"version": "3"},
        "version: expected \"4\" (Alertmanager webhook payload version 4), got '3'",
    ),
    (
        {k: v for k, v in payload().items() if k != "version"},
        'version: expected "4" (Alertmanager webhook payload version 4), got null',
    ),
    (payload() | {"receiver": 7}, "receiver: expected a string, got a number"),
    (payload() | {"receiver": ""}, "receiver: must not be empty"),
    (payload() | {"status": "pending"}, 'status: expected "firing" or "resolved", got \'pending\''),
    (
        {k: v for k, v in payload().items() if k != "groupKey"},
        "groupKey: expected a string, got null",
    ),
    (payload() | {"alerts": []}, "alerts: expected a non-empty array of alerts, got an empty one"),
    (payload() | {"alerts": {}}, "alerts: expected a non-empty array of alerts, got an object"),
    (payload() | {"alerts": [alert(), 3]}, "alerts[1]: expected an object, got a number"),
    (
        payload() | {"alerts": [alert() | {"status": None}]},
        'alerts[0].status: expected "firing" or "resolved", got null',
    ),
    (
        payload() | {"alerts": [{"status": "firing"}]},
        "alerts[0].labels: required",
    ),
    (
        payload() | {"alerts": [alert() | {"labels": {"severity": 3}}]},
        "alerts[0].labels.severity: expected a string, got a number",
    ),
    (
        payload() | {"alerts": [alert() | {"annotations": ["summary"]}]},
        "alerts[0].annotations: expected an object of strings, got an array",
    ),
    (
        payload() | {"alerts": [alert() | {"startsAt": 1700000000}]},
        "alerts[0].startsAt: expected a string, got a number",
    ),
    (
        payload() | {"commonLabels": {"a": None}},
        "commonLabels.a: expected a string, got null",
    ),
    (payload() | {"truncatedAlerts": -1}, "truncatedAlerts: expected an integer >= 0"),
    (payload() | {"truncatedAlerts": True}, "truncatedAlerts: expected an integer >= 0"),
    (payload() | {"externalURL": []}, "externalURL: expected a string, got an array"),
]


@pytest.mark.parametrize(("body", "detail"), BAD)
def test_bad_payloads_are_named_precisely(body: Any, detail: str) -> None:
    with pytest.raises(NotificationError) as info:
        parse_notification(body)
    assert str(info.value) == detail


def test_unknown_fields_are_ignored_for_newer_alertmanagers() -> None:
    notification = parse_notification(payload(future="x") | {"truncatedAlerts": None})
    assert notification.receiver == "oncall" and notification.truncated_alerts == 0


# --- de-duplication and rate limit --------------------------------------------------------------

A, B = "+886912345678", "+886912345679"


def gate_settings(
    window: float = 300.0, max_messages: int = 2, per: float = 60.0
) -> AlertingSettings:
    return AlertingSettings.model_validate(
        {
            "dedup_window": f"{window}s",
            "rate_limit": {"max_messages": max_messages, "per": f"{per}s"},
        }
    )


def test_same_group_and_status_within_the_window_is_sent_once() -> None:
    gate, conf = AlertGate(), gate_settings(window=300.0, max_messages=100)
    first = gate.admit(("oncall", "g", "firing"), [A, B], 1000.0, conf)
    assert first.allowed == (A, B) and first.duplicate_of is None
    gate.commit(first, "MSG1")
    repeat = gate.admit(("oncall", "g", "firing"), [A, B], 1299.0, conf)
    assert repeat.duplicate_of == "MSG1" and repeat.allowed == ()
    # Another status, group or receiver is another notification.
    assert gate.admit(("oncall", "g", "resolved"), [A], 1299.0, conf).duplicate_of is None
    assert gate.admit(("oncall", "h", "firing"), [A], 1299.0, conf).duplicate_of is None
    assert gate.admit(("other", "g", "firing"), [A], 1299.0, conf).duplicate_of is None
    # Once the window has passed, the same notification goes out again.
    again = gate.admit(("oncall", "g", "firing"), [A], 1300.0, conf)
    assert again.duplicate_of is None and again.allowed == (A,)


def test_zero_window_turns_deduplication_off() -> None:
    gate, conf = AlertGate(), gate_settings(window=0.0, max_messages=100)
    for now in (1.0, 1.0, 2.0):
        assert gate.admit(("oncall", "g", "firing"), [A], now, conf).allowed == (A,)


def test_rate_limit_per_number_over_a_sliding_window() -> None:
    gate, conf = AlertGate(), gate_settings(max_messages=2, per=60.0)
    assert gate.admit(("r", "g1", "firing"), [A], 0.0, conf).allowed == (A,)
    assert gate.admit(("r", "g2", "firing"), [A, B], 10.0, conf).allowed == (A, B)
    third = gate.admit(("r", "g3", "firing"), [A, B], 20.0, conf)
    assert (third.allowed, third.limited) == ((B,), (A,))
    fourth = gate.admit(("r", "g4", "firing"), [A, B], 30.0, conf)
    assert (fourth.allowed, fourth.limited) == ((), (A, B))
    # Nothing went out: the same notification is not treated as a duplicate later.
    assert gate.admit(("r", "g4", "firing"), [A, B], 30.0, conf).duplicate_of is None
    # The first send of A leaves the window at 60s.
    assert gate.admit(("r", "g5", "firing"), [A], 60.0, conf).allowed == (A,)


def test_release_undoes_an_admission_whose_message_was_not_stored() -> None:
    gate, conf = AlertGate(), gate_settings(max_messages=1)
    admitted = gate.admit(("r", "g", "firing"), [A], 5.0, conf)
    gate.release(admitted)
    retried = gate.admit(("r", "g", "firing"), [A], 6.0, conf)
    assert retried.duplicate_of is None and retried.allowed == (A,)


# --- config -------------------------------------------------------------------------------------

CONFIG = """
servers:
  - {name: hq, url: "http://127.0.0.1:9", username: root, password: pw}
api: {default_region: CN, max_recipients: 3}
alerting:
"""


@pytest.mark.parametrize(
    ("alerting", "expected"),
    [
        (
            "  receivers: {oncall: {to: ['13800138000', '123']}}",
            'alerting.receivers.oncall.to[1]: "123" is not a valid phone number '
            "(default region CN)",
        ),
        ("  receivers: {oncall: {}}", "alerting.receivers.oncall.to: required key is missing"),
        (
            "  receivers: {oncall: {to: []}}",
            "alerting.receivers.oncall.to: tuple should have at least 1 item after validation, "
            "not 0",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], cc: ['13800138001']}}",
            "alerting.receivers.oncall.cc: unknown key",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], max_segments: 0}}",
            "alerting.receivers.oncall.max_segments: input should be greater than or equal to 1",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {server: nope}}}",
            'alerting.receivers.oncall.route.server: no server named "nope"',
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {cloud: smsgo}}}",
            "alerting.receivers.oncall.route.cloud: provider smsgo is not configured under "
            "providers.smsgo",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {line: G101}}}",
            "alerting.receivers.oncall.route: give either server (with optional provider or "
            "line) or cloud",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000', '13800138001', '13800138002', "
            "'13800138003']}}",
            "alerting.receivers.oncall.to: at most api.max_recipients (3) numbers",
        ),
        (
            '  receivers: {"on\\tcall": {to: ["13800138000"]}}',
            'alerting.receivers: receiver names are 1-128 printable characters, got "on\tcall"',
        ),
        ("  dedup_window: soon", 'alerting.dedup_window: expected a duration like 15s, got "soon"'),
        ("  rate_limit: {per: 0s}", "alerting.rate_limit.per: must be greater than 0s, got 0s"),
        (
            "  rate_limit: {max_messages: 0}",
            "alerting.rate_limit.max_messages: input should be greater than or equal to 1",
        ),
        ("  page_everyone: true", "alerting.page_everyone: unknown key"),
    ],
)
def test_bad_alerting_config_names_the_key(alerting: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(CONFIG + alerting, source=Path("goipd.yaml"), environ={})
    assert f"goipd.yaml: {expected}" in info.value.lines()


def test_alerting_config_numbers_use_the_default_region() -> None:
    settings = parse_settings(
        CONFIG
        + "  receivers:\n"
        + "    oncall: {to: ['13800138000', '+8613800138000', '+886912345678'],"
        + " route: {server: hq, line: G101}, max_segments: 1}\n"
        + "  dedup_window: 1m\n"
        + "  rate_limit: {max_messages: 3, per: 10m}\n",
        environ={},
    )
    oncall = settings.alerting.receivers["oncall"]
    assert oncall.to == ("+8613800138000", "+886912345678")
    assert oncall.route is not None and oncall.route.line == "G101"
    assert oncall.max_segments == 1
    assert settings.alerting.dedup_window == 60.0
    assert (settings.alerting.rate_limit.max_messages, settings.alerting.rate_limit.per) == (3, 600)
    defaults = parse_settings("", environ={}).alerting
    assert defaults.receivers == {} and defaults.dedup_window == 300.0


# --- the receiver over HTTP, against goipd and the simulated fleet ------------------------------

Relay = tuple[RunningSimulator, Daemon, str]
ALERTING = {
    "receivers": {
        "oncall": {"to": ["0912345678", "+886912345679"]},
        "pager": {
            "to": ["0912000111"],
            "route": {"server": "hq", "line": "G102"},
            "max_segments": 1,
        },
    },
    "dedup_window": "5m",
    "rate_limit": {"max_messages": 2, "per": "1h"},
}


@pytest.fixture
async def relay(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    tmp_path: Path,
) -> Relay:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}, {"line_id": "G102"}]))
    config = daemon_config(
        sim,
        ["hq"],
        tmp_path,
        routing={"line_rate_per_minute": 600, "retry_delay": "100ms"},
        alerting=ALERTING,
    )
    daemon = await daemon_factory(config)
    return sim, daemon, f"http://127.0.0.1:{daemon.port}"


async def post(
    http: aiohttp.ClientSession, base: str, body: Any, status: int = 200
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(f"{base}/api/v1/alertmanager", **kwargs) as resp:
        reply: dict[str, Any] = await resp.json(content_type=None)
        assert resp.status == status, reply
        return reply


async def sent_to(
    http: aiohttp.ClientSession, sim: RunningSimulator, number: str
) -> list[dict[str, Any]]:
    sent = await control(http, sim, "GET", "servers/hq/sent")
    return [s for s in sent if s["number"].lstrip("+").endswith(number.lstrip("+")[-9:])]


async def metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        return await resp.text()


async def test_notification_becomes_a_durable_sms_once(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    sim, _daemon, base = relay
    scrape = await metrics(http, base)
    for outcome in ("sent", "deduplicated", "rate_limited", "failed"):
        assert (
            sample(
                scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome=outcome
            )
            == 0
        )
    reply = await post(http, base, payload())
    assert reply["outcome"] == "sent" and reply["status"] == "firing"
    assert reply["recipients"] == {"+886912345678": "sent", "+886912345679": "sent"}
    text = "[FIRING:1] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered"
    async with http.get(f"{base}/api/v1/messages/{reply['message_id']}") as resp:
        message = await resp.json()
    assert message["text"] == text
    assert message["encoding"] == "GSM-7" and message["segments"] == 1

    async def both_received() -> bool:
        got = [await sent_to(http, sim, n) for n in ("+886912345678", "+886912345679")]
        return all(g and g[0]["content"] == text for g in got)

    await eventually(both_received, 10, "the alert SMS reaches both numbers")
    # Alertmanager re-sending the same notification (a retry, or a flush with no news).
    again = await post(http, base, payload())
    assert again["outcome"] == "deduplicated"
    assert again["duplicate_of"] == reply["message_id"] and again["message_id"] is None
    resolved = await post(
        http,
        base,
        payload(alert("resolved", "SIM of line hq/G101 not registered"), status="resolved"),
    )
    assert resolved["outcome"] == "sent" and resolved["message_id"] != reply["message_id"]
    scrape = await metrics(http, base)
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome="sent")
        == 2
    )
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="oncall",
            outcome="deduplicated",
        )
        == 1
    )
    assert sample(scrape, "goipd_messages_accepted_total") == 4


async def test_forced_route_and_one_segment(relay: Relay, http: aiohttp.ClientSession) -> None:
    sim, _daemon, base = relay
    body = payload(alert(summary="the SIM stopped answering " * 20), receiver="pager")
    reply = await post(http, base, body)
    assert reply["recipients"] == {"+886912000111": "sent"}

    async def received() -> bool:
        return bool(await sent_to(http, sim, "+886912000111"))

    await eventually(received, 10, "the pager SMS is sent")
    (sms,) = await sent_to(http, sim, "+886912000111")
    assert sms["goip_line"] == "G102"
    assert len(sms["content"]) <= 160 and sms["content"].endswith("...")


async def test_rate_limit_leaves_out_numbers_over_the_limit(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    _sim, _daemon, base = relay
    for group in ("a", "b"):
        assert (await post(http, base, payload(group_key=group)))["outcome"] == "sent"
    third = await post(http, base, payload(group_key="c"))
    assert third["outcome"] == "rate_limited" and third["message_id"] is None
    assert third["recipients"] == {"+886912345678": "rate_limited", "+886912345679": "rate_limited"}
    scrape = await metrics(http, base)
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="oncall",
            outcome="rate_limited",
        )
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_recipients_rate_limited_total", receiver="oncall") == 2
    )
    # Another receiver's number has its own budget.
    assert (await post(http, base, payload(receiver="pager")))["outcome"] == "sent"


async def test_bad_requests_are_problems_and_counted_without_their_receiver(
    relay: Relay, http: aiohttp.ClientSession
) -> None:
    _sim, _daemon, base = relay
    problem = await post(http, base, payload(receiver="nobody"), status=404)
    assert problem["detail"] == "no receiver named 'nobody' under alerting.receivers"
    problem = await post(http, base, payload(receiver="nobody\ud800"), status=422)
    assert problem["detail"] == "receiver: holds a lone UTF-16 surrogate at character 6"
    problem = await post(http, base, payload() | {"status": "pending"}, status=400)
    assert problem["detail"] == 'status: expected "firing" or "resolved", got \'pending\''
    problem = await post(http, base, b"{", status=400)
    assert problem["detail"].startswith("request body is not valid JSON")
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(f"{base}/api/v1/alertmanager", json=payload()) as resp,
    ):
        assert resp.status == 401
    scrape = await metrics(http, base)
    assert (
        sample(
            scrape,
            "goipd_alertmanager_notifications_total",
            receiver="",
            outcome="unknown_receiver",
        )
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="", outcome="malformed")
        == 3
    )
    assert "nobody" not in scrape
    assert sample(scrape, "goipd_messages_accepted_total") == 0


async def test_reload_picks_up_changed_receivers(relay: Relay, http: aiohttp.ClientSession) -> None:
    _sim, daemon, base = relay
    assert daemon.settings.source is not None
    config = yaml.safe_load(daemon.settings.source.read_text())
    config["alerting"]["receivers"] = {"night": {"to": ["0912555666"]}}
    daemon.settings.source.write_text(yaml.safe_dump(config))
    assert await daemon.reload()
    reply = await post(http, base, payload(receiver="night"))
    assert reply["recipients"] == {"+886912555666": "sent"}
    await post(http, base, payload(receiver="oncall"), status=404)
    scrape = await metrics(http, base)
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="night", outcome="sent")
        == 1
    )
    assert (
        sample(scrape, "goipd_alertmanager_notifications_total", receiver="oncall", outcome="sent")
        is None
    )


# --- end to end with a real Alertmanager --------------------------------------------------------


@contextmanager
def running_alertmanager(
    config: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Alertmanager on loopback; stopped (killed if need be) whatever happens."""
    assert ALERTMANAGER is not None
    port = free_port()
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config))
    config_file.chmod(0o600)
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config_file}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.skipif(
    ALERTMANAGER is None, reason="alertmanager not installed (make tools installs it)"
)
async def test_real_alertmanager_pages_through_goipd(
    relay: Relay, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim, _daemon, base = relay
    config = {
        "route": {
            "receiver": "oncall",
            "group_by": ["alertname", "server", "line"],
            "group_wait": "200ms",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "oncall",
                "webhook_configs": [
                    {
                        "url": f"{base}/api/v1/alertmanager",
                        "send_resolved": True,
                        "http_config": {"authorization": {"credentials": API_TOKEN}},
                    }
                ],
            }
        ],
    }
    started = datetime.now(UTC) - timedelta(seconds=5)
    alert = {
        "labels": {**SIM_DEAD, "line": "G102"},
        "annotations": {"summary": "SIM of line hq/G102 not registered"},
        "startsAt": _rfc3339(started),
        "generatorURL": "http://prometheus.invalid/graph",
    }
    numbers = ("+886912345678", "+886912345679")
    log = tmp_path / "alertmanager.log"
    with running_alertmanager(config, tmp_path) as (alertmanager, process):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as am:

            async def ready() -> bool:
                try:
                    async with am.get(f"{alertmanager}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 10, "Alertmanager ready")

            async def post_alert(body: dict[str, Any]) -> None:
                async with am.post(f"{alertmanager}/api/v2/alerts", json=[body]) as resp:
                    assert resp.status == 200, await resp.text()

            async def received(text: str) -> bool:
                sent = [await sent_to(http, sim, n) for n in numbers]
                return all(any(s["content"] == text for s in got) for got in sent)

            await post_alert(alert)
            firing = (
                "[FIRING:1] GoipdSimDead line=G102 server=hq: SIM of line hq/G102 not registered"
            )
            try:
                await eventually(lambda: received(firing), 15, "the firing SMS reaches the SIM")
                # Resolved: the same alert again, ended in the past.
                await post_alert(
                    alert | {"endsAt": _rfc3339(datetime.now(UTC) - timedelta(seconds=1))}
                )
                resolved = firing.replace("[FIRING:1]", "[RESOLVED:1]")
                await eventually(lambda: received(resolved), 15, "the resolved SMS reaches the SIM")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n--- alertmanager log ---\n{log.read_text()[-3000:]}"
                ) from None
    assert process.returncode is not None, "Alertmanager still running"
    for number in numbers:
        contents = sorted(s["content"] for s in await sent_to(http, sim, number))
        assert contents == [firing, resolved], (number, contents)
