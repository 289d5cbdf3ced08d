"""Alertmanager → SMS: rendering and parsing as pure functions; de-duplication (in a real ledger,
both backends) and the rate limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goipd.accept.alerts import (
    AlertGate,
    AlertRelay,
    NotificationError,
    parse_notification,
    render,
)
from goipd.config import AlertingSettings, AlertReceiverSettings, RouteTarget
from goipd.ledger.base import AlertPages
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from goipd.upstream import segments
from tests.helpers.alerts import SIM_DEAD, alert, payload
from tests.helpers.ledgers import BACKENDS, open_backend

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


def test_the_runbook_base_label_never_reaches_the_sms() -> None:
    # An external label Prometheus adds to every alert when the operator keeps it on alerts.
    labels = {**SIM_DEAD, "goipd_runbook_base": "https://wiki.example.net/goipd/docs"}
    body = payload(alert("firing", "SIM of line hq/G101 not registered", **labels))
    assert "runbook" not in rendered(body) and "wiki" not in rendered(body)


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
# The gate keeps its pages in a real ledger, on both backends; "a restart" or "another instance"
# is a second gate on the same ledger.

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


@pytest.fixture(params=BACKENDS)
async def pages(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AlertPages]:
    async with open_backend(request.param, tmp_path) as store:
        yield store


async def test_same_group_and_status_within_the_window_is_sent_once(pages: AlertPages) -> None:
    gate, conf = AlertGate(pages), gate_settings(window=300.0, max_messages=100)
    first = await gate.admit(("oncall", "g", "firing"), [A, B], 1000.0, conf)
    assert first.allowed == (A, B) and first.duplicate_of is None
    await gate.commit(first, "MSG1")
    repeat = await gate.admit(("oncall", "g", "firing"), [A, B], 1299.0, conf)
    assert repeat.duplicate_of == "MSG1" and repeat.allowed == ()
    # Another status, group or receiver is another notification.
    assert (await gate.admit(("oncall", "g", "resolved"), [A], 1299.0, conf)).duplicate_of is None
    assert (await gate.admit(("oncall", "h", "firing"), [A], 1299.0, conf)).duplicate_of is None
    assert (await gate.admit(("other", "g", "firing"), [A], 1299.0, conf)).duplicate_of is None
    # Once the window has passed, the same notification goes out again.
    again = await gate.admit(("oncall", "g", "firing"), [A], 1300.0, conf)
    assert again.duplicate_of is None and again.allowed == (A,)


async def test_a_restarted_or_other_instance_does_not_send_again(pages: AlertPages) -> None:
    conf = gate_settings(window=300.0, max_messages=100)
    first = await AlertGate(pages).admit(("oncall", "g", "firing"), [A], 1000.0, conf)
    # Admitted, its message not stored yet: a duplicate all the same.
    other = AlertGate(pages)
    pending = await other.admit(("oncall", "g", "firing"), [A], 1001.0, conf)
    assert pending.duplicate_of == "" and pending.allowed == ()
    await AlertGate(pages).commit(first, "MSG1")
    repeat = await AlertGate(pages).admit(("oncall", "g", "firing"), [A], 1200.0, conf)
    assert repeat.duplicate_of == "MSG1" and repeat.allowed == ()


async def test_zero_window_turns_deduplication_off(pages: AlertPages) -> None:
    gate, conf = AlertGate(pages), gate_settings(window=0.0, max_messages=100)
    for now in (1.0, 1.0, 2.0):
        admission = await gate.admit(("oncall", "g", "firing"), [A], now, conf)
        assert admission.allowed == (A,)
        await gate.commit(admission, "MSG")


async def test_rate_limit_per_number_over_a_sliding_window(pages: AlertPages) -> None:
    gate, conf = AlertGate(pages), gate_settings(max_messages=2, per=60.0)
    assert (await gate.admit(("r", "g1", "firing"), [A], 0.0, conf)).allowed == (A,)
    assert (await gate.admit(("r", "g2", "firing"), [A, B], 10.0, conf)).allowed == (A, B)
    third = await gate.admit(("r", "g3", "firing"), [A, B], 20.0, conf)
    assert (third.allowed, third.limited) == ((B,), (A,))
    fourth = await gate.admit(("r", "g4", "firing"), [A, B], 30.0, conf)
    assert (fourth.allowed, fourth.limited) == ((), (A, B))
    # Nothing went out: the same notification is not treated as a duplicate later, here or on
    # another instance.
    assert (await gate.admit(("r", "g4", "firing"), [A, B], 30.0, conf)).duplicate_of is None
    other = await AlertGate(pages).admit(("r", "g4", "firing"), [A, B], 30.0, conf)
    assert other.duplicate_of is None and other.allowed == (A, B)
    # The first send of A leaves the window at 60s.
    assert (await gate.admit(("r", "g5", "firing"), [A], 60.0, conf)).allowed == (A,)


async def test_release_undoes_an_admission_whose_message_was_not_stored(
    pages: AlertPages,
) -> None:
    gate, conf = AlertGate(pages), gate_settings(max_messages=1)
    admitted = await gate.admit(("r", "g", "firing"), [A], 5.0, conf)
    await gate.release(admitted)
    retried = await gate.admit(("r", "g", "firing"), [A], 6.0, conf)
    assert retried.duplicate_of is None and retried.allowed == (A,)
    # Released by another instance's gate too (the claim is in the ledger, its send budget
    # is this gate's own).
    await AlertGate(pages).release(retried)
    assert (await AlertGate(pages).admit(("r", "g", "firing"), [A], 7.0, conf)).allowed == (A,)


async def test_a_page_whose_message_was_not_stored_is_paged_on_the_retry(
    pages: AlertPages,
) -> None:
    # The relay as the receiver runs it: the accept path fails (a ledger that cannot write,
    # answered 503), Alertmanager retries, and the retry pages; a repeat after that does not.
    metrics = Metrics()
    settings = gate_settings(max_messages=1).model_copy(
        update={"receivers": {"oncall": AlertReceiverSettings(to=(A,))}}
    )
    relay = AlertRelay(settings, metrics, pages)
    receiver = relay.receiver("oncall")
    assert receiver is not None
    notification = parse_notification(payload())

    async def refused(numbers: Sequence[str], text: str, route: RouteTarget | None) -> str:
        raise LedgerError("disk full")

    async def stored(numbers: Sequence[str], text: str, route: RouteTarget | None) -> str:
        return "MSG1"

    with pytest.raises(LedgerError):
        await relay.deliver(notification, receiver, "text", 1000.0, refused)
    reply = await relay.deliver(notification, receiver, "text", 1001.0, stored)
    assert (reply["outcome"], reply["message_id"]) == ("sent", "MSG1")
    repeat = await relay.deliver(notification, receiver, "text", 1002.0, stored)
    assert (repeat["outcome"], repeat["duplicate_of"]) == ("deduplicated", "MSG1")
    counted = [
        metrics.registry.get_sample_value(
            "goipd_alertmanager_notifications_total", {"receiver": "oncall", "outcome": outcome}
        )
        for outcome in ("failed", "sent", "deduplicated")
    ]
    assert counted == [1, 1, 1]
