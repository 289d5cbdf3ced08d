"""Cloud providers as routes, end to end: goipd, the GoIP simulator and the smsgo, PaaSoo and c123
simulators, all over loopback HTTP. Delivery reports and replies are pushed by the simulators to
goipd's hooks the way the real services push them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from goipd.sim.smsgo import FIRST_MSGID
from tests.helpers.checks import eventually, sample
from tests.helpers.cloud import PAASOO_HOOK, SMSGO_HOOK, Clouds, providers
from tests.helpers.daemons import daemon_config, fleet_spec
from tests.helpers.pipeline import send
from tests.helpers.processes import free_port

TW = "+886912345678"
CN = "+8613800138000"
SG = "+6591234567"


Start = Callable[..., Awaitable[tuple[Daemon, str]]]


@pytest.fixture
async def cloud_goipd(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    clouds: Clouds,
    tmp_path: Path,
) -> Start:
    """goipd with one SMS Server whose SIMs are all logged out (unless `hq_lines` says
    otherwise), and the three providers."""

    async def start(
        routes: list[dict[str, Any]],
        *,
        smsgo_reports: bool = True,
        hq_lines: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> tuple[Daemon, str]:
        dead_sims = [{"line_id": "G101", "reg": "LOGOUT"}, {"line_id": "G102", "reg": ""}]
        sim = await simulator(fleet_spec(hq=hq_lines or dead_sims))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = daemon_config(
            sim,
            ["hq"],
            tmp_path,
            routes=routes,
            providers=overrides.pop("providers", None) or providers(clouds),
            routing={"retry_delay": "100ms", "max_attempts": 6, **overrides.pop("routing", {})},
            api={"duplicate_window": "0s"},
            **overrides,
        )
        config["http"] = {**config["http"], "listen": f"127.0.0.1:{port}", "public_url": base}
        if not smsgo_reports:
            # Without a hook token smsgo is given no report URL: only status queries remain.
            del config["providers"]["smsgo"]["hook_token"]
        clouds.paasoo.sim.set_dlr(
            client_url=f"{base}/hooks/paasoo/report?token={PAASOO_HOOK}", delay=0.05
        )
        return await daemon_factory(config), base

    return start


async def message(http: aiohttp.ClientSession, base: str, message_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/messages/{message_id}") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def until_state(
    http: aiohttp.ClientSession, base: str, message_id: str, states: set[str], within: float = 10
) -> dict[str, Any]:
    async def reached() -> bool:
        body = await message(http, base, message_id)
        return all(r["state"] in states for r in body["recipients"])

    await eventually(reached, within, f"message {message_id} in {states}")
    return (await message(http, base, message_id))["recipients"][0]


async def metrics(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as resp:
        return await resp.text()


async def test_dead_sims_fall_back_to_smsgo_and_its_report_delivers(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"server": "hq"}, {"cloud": "smsgo"}]}])
    reply = await send(http, base, {"to": [TW], "text": "your code is 1234"})
    recipient = await until_state(http, base, reply["id"], {"delivered"})
    assert recipient["route"] == "smsgo"
    assert recipient["server"] is None
    sent = list(clouds.smsgo.sim.sends)
    assert len(sent) == 1
    msgid = recipient["upstream_id"]
    assert msgid and msgid in clouds.smsgo.sim.messages
    # smsgo only stops pushing once the acknowledgement is byte-exact: one attempt was enough.
    pushes = [d for d in clouds.smsgo.sim.dlr_log if d.get("msgid") == msgid]
    assert len(pushes) == 1, pushes
    assert pushes[0]["outcome"] == "ok"
    # The token travels in the path of the URL smsgo was given, never as a query of ours.
    assert clouds.smsgo.sim.messages[msgid].response.endswith(f"/hooks/smsgo/report/{SMSGO_HOOK}")
    text = await metrics(http, base)
    assert sample(text, "goipd_sms_sent_total", route="smsgo", result="succeeded") == 1
    assert sample(text, "goipd_sms_delivered_total", route="smsgo") == 1
    assert sample(text, "goipd_push_reports_total", source="smsgo", kind="report") == 1

    async def balance_known() -> bool:
        value = sample(await metrics(http, base), "goipd_provider_balance", provider="smsgo")
        return value is not None and value == clouds.smsgo.sim.points

    await eventually(balance_known, 5, "smsgo balance exported")


async def test_a_text_no_goip_hop_can_carry_takes_the_cloud_hop(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    _, base = await cloud_goipd(
        [{"via": [{"server": "hq"}, {"cloud": "smsgo"}]}], hq_lines=[{"line_id": "G101"}]
    )
    plain = await send(http, base, {"to": [TW], "text": "plain text"})
    emoji = await send(http, base, {"to": ["+886912345679"], "text": "see you 😀"})
    assert (await until_state(http, base, plain["id"], {"sent", "delivered"}))["route"] == "goip"
    recipient = await until_state(http, base, emoji["id"], {"sent", "delivered"})
    # The SMS Server would cut the text at the emoji: goipd never asked it, smsgo sent it.
    assert recipient["route"] == "smsgo" and recipient["attempts"] == 1
    (sent,) = clouds.smsgo.sim.sends
    assert (sent["dstaddr"], sent["delivered_text"]) == (["0912345679"], "see you 😀")


async def test_smsgo_primary_down_fails_over_to_backup(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    # Down before goipd connects: a connection kept alive from before would outlive the fault.
    await clouds.smsgo.sim.set_fault("down", "primary")
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}])
    reply = await send(http, base, {"to": [TW], "text": "via the backup"})
    recipient = await until_state(http, base, reply["id"], {"delivered"})
    assert recipient["route"] == "smsgo"
    sides = [r["side"] for r in clouds.smsgo.sim.requests if r["operation"] == "sendsms.aspx"]
    assert sides == ["backup"]


async def test_smsgo_reply_hook_stores_inbound_and_wrong_token_is_refused(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}])
    reply = await send(http, base, {"to": [TW], "text": "reply to me"})
    recipient = await until_state(http, base, reply["id"], {"delivered"})
    await clouds.smsgo.sim.inject_reply(recipient["upstream_id"], "好的，謝謝")

    async def stored() -> bool:
        async with http.get(f"{base}/api/v1/inbound") as resp:
            items = (await resp.json())["inbound"]
        return any(i["source"] == "smsgo" and i["text"] == "好的，謝謝" for i in items)

    await eventually(stored, 5, "smsgo reply stored as inbound SMS")
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/hooks/smsgo/report", "/hooks/smsgo/reply", "/hooks/paasoo/report"):
            async with anonymous.get(f"{base}{path}?token=wrong&msgid=1") as resp:
                assert resp.status == 401
            async with anonymous.get(f"{base}{path}?msgid=1") as resp:
                assert resp.status == 401
            async with anonymous.get(f"{base}{path}/wrong-token-0123456789?msgid=1") as resp:
                assert resp.status == 401
        # A malformed report with the right token is a clear 400, not a crash.
        async with anonymous.get(f"{base}/hooks/smsgo/report?token={SMSGO_HOOK}") as resp:
            assert resp.status == 400
            assert resp.content_type == "application/problem+json"


async def test_paasoo_dlr_delivers_and_failures_keep_the_providers_code(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"server": "hq"}, {"cloud": "paasoo"}]}])
    failing = "6591234568"
    clouds.paasoo.sim.set_dlr(
        numbers={failing: {"status": "404", "statuscode": "Absent Subscriber Permanent"}}
    )
    ok = await send(http, base, {"to": [SG], "text": "hello from paasoo"})
    bad = await send(http, base, {"to": [f"+{failing}"], "text": "hello again"})
    delivered = await until_state(http, base, ok["id"], {"delivered"})
    assert delivered["route"] == "paasoo" and delivered["upstream_id"]
    failed = await until_state(http, base, bad["id"], {"failed"})
    assert failed["error"]["code"] == "404"
    assert "Absent Subscriber" in failed["error"]["meaning"]
    assert clouds.paasoo.sim.sent[0]["to"] == ["6591234567"]
    text = await metrics(http, base)
    assert sample(text, "goipd_sms_undelivered_total", route="paasoo") == 1


async def test_c123_send_balance_and_replies_exactly_once(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    clouds.c123.sim.add_reply("13800138000", "收到")
    clouds.c123.sim.add_reply("13900139000", "明天见")
    daemon, base = await cloud_goipd([{"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}]}])
    reply = await send(http, base, {"to": [CN], "text": "验证码 8812"})
    recipient = await until_state(http, base, reply["id"], {"sent"})
    assert recipient["route"] == "c123" and recipient["upstream_id"]
    assert clouds.c123.sim.sent[0]["mobiles"] == ["13800138000"]
    assert clouds.c123.sim.sent[0]["content"] == "验证码 8812"

    async def inbound() -> list[dict[str, Any]]:
        async with http.get(f"{base}/api/v1/inbound") as resp:
            return [i for i in (await resp.json())["inbound"] if i["source"] == "c123"]

    async def both_replies() -> bool:
        return len(await inbound()) == 2

    await eventually(both_replies, 5, "both c123 replies stored")
    assert {i["text"] for i in await inbound()} == {"收到", "明天见"}

    async def counted() -> bool:
        text = await metrics(http, base)
        return (
            sample(text, "goipd_provider_balance", provider="c123") == clouds.c123.sim.balance
            and sample(text, "goipd_provider_sent_messages", provider="c123")
            == clouds.c123.sim.sent_total
        )

    await eventually(counted, 5, "c123 balance and sent total exported")
    # A restart polls again: c123 hands each reply out once, so nothing is stored twice.
    await daemon.stop(grace=1.0)
    await asyncio.sleep(0.2)
    assert len(clouds.c123.sim.handed_out) == 2


async def test_c123_rate_pause_waits_without_burning_attempts(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    clouds.c123.sim.set_account(min_send_interval=60.0)
    daemon, base = await cloud_goipd([{"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}]}])
    first = await send(http, base, {"to": [CN], "text": "first"})
    await until_state(http, base, first["id"], {"sent"})
    second = await send(http, base, {"to": ["+8613900139000"], "text": "second"})
    # c123 answers 107 (too fast) and asks for 30 s of quiet. With retries every 100 ms
    # doubling, a recipient that kept trying would use up its 6 attempts within ~3 s.
    await asyncio.sleep(4)
    [recipient] = (await message(http, base, second["id"]))["recipients"]
    assert (recipient["state"], recipient["attempts"]) == ("queued", 1)
    assert recipient["error"]["code"] in ("107", "no_route")
    assert len(clouds.c123.sim.sent) == 1


@pytest.mark.parametrize(
    ("mode", "disables"),
    [("auth", True), ("no_credit", True), ("timeout", False), ("http_500", False)],
)
async def test_smsgo_refusal_fails_over_to_paasoo(
    cloud_goipd: Start,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    mode: str,
    disables: bool,
) -> None:
    daemon, base = await cloud_goipd(
        [{"via": [{"server": "hq"}, {"cloud": "smsgo"}, {"cloud": "paasoo"}]}]
    )
    await clouds.smsgo.sim.set_fault(mode, delay=3.0)
    reply = await send(http, base, {"to": [TW], "text": f"smsgo is {mode}"})
    recipient = await until_state(http, base, reply["id"], {"delivered"})
    assert recipient["route"] == "paasoo"
    text = await metrics(http, base)
    disabled = sample(text, "goipd_provider_disabled", provider="smsgo")
    assert disabled == (1 if disables else 0)
    if not disables:
        reason = "timeout" if mode == "timeout" else "http_status"
        errors = sample(
            text, "goipd_provider_errors_total", provider="smsgo", operation="send", reason=reason
        )
        assert (errors or 0) >= 1
    # The API and /metrics kept answering; the fault clears and smsgo is used again.
    await clouds.smsgo.sim.set_fault("none")

    async def smsgo_back() -> bool:
        text = await metrics(http, base)
        if sample(text, "goipd_provider_disabled", provider="smsgo") != 0:
            return False
        again = await send(
            http, base, {"to": [TW], "text": f"after {mode} {asyncio.get_running_loop().time()}"}
        )
        await asyncio.sleep(0.3)
        body = await message(http, base, again["id"])
        return body["recipients"][0]["route"] == "smsgo"

    await eventually(smsgo_back, 10, "smsgo used again after the fault cleared")


def _taken(clouds: Clouds, provider: str) -> list[str]:
    """Every number the provider's simulator accepted a send for, once per send."""
    if provider == "smsgo":
        return [n for m in clouds.smsgo.sim.messages.values() for n in m.numbers]
    if provider == "paasoo":
        return [n for call in clouds.paasoo.sim.sent for n in call["to"]]
    return [n for call in clouds.c123.sim.sent for n in call["mobiles"]]


async def _set_fault(clouds: Clouds, provider: str, mode: str) -> None:
    # 3 s against goipd's 1 s timeout: `slow` stands for the 30 s answers of a real outage.
    if provider == "smsgo":
        await clouds.smsgo.sim.set_fault(mode, delay=3.0)
    elif provider == "paasoo":
        clouds.paasoo.sim.set_fault(mode, delay=3.0)
    else:
        clouds.c123.sim.set_fault(mode, delay=3.0)


# Each provider as the first hop, a different one as the second; the numbers it can send to.
FAULT_ROUTES = {
    "smsgo": ("paasoo", "+8869123400{:02d}"),
    "paasoo": ("smsgo", "+8869123500{:02d}"),
    "c123": ("paasoo", "+86138001380{:02d}"),
}
# What goipd_provider_errors_total{operation="send"} counts for each fault; None: an account
# refusal, which disables the provider instead.
FAULT_REASONS = {
    "timeout": "timeout",
    "slow": "timeout",
    "reset": "connect",
    "down": "connect",
    "http_500": "http_status",
    "html": "parse",
    "truncated": "parse",
    "auth": None,
}
# Faults after which goipd cannot know whether the provider acted on the send (it may, like a
# real one, for timeout, slow and truncated; an HTML page could come from a proxy after it).
AMBIGUOUS_FAULTS = frozenset({"timeout", "slow", "truncated", "html"})


@pytest.mark.parametrize("mode", list(FAULT_REASONS))
@pytest.mark.parametrize("provider", list(FAULT_ROUTES))
async def test_provider_fault_fails_over_loses_nothing_and_recovers(
    cloud_goipd: Start,
    clouds: Clouds,
    http: aiohttp.ClientSession,
    provider: str,
    mode: str,
) -> None:
    fallback, number = FAULT_ROUTES[provider]
    daemon, base = await cloud_goipd(
        [{"via": [{"cloud": provider}, {"cloud": fallback}]}],
        routing={"provider_probe_interval": "1s"},
    )
    await _set_fault(clouds, provider, mode)
    numbers = [number.format(index) for index in range(3)]
    ids = [
        (await send(http, base, {"to": [n], "text": f"{provider} {mode} {n}"}))["id"]
        for n in numbers
    ]

    # While the provider misbehaves, the API and /metrics answer promptly.
    started = time.monotonic()
    text = await metrics(http, base)
    async with http.get(f"{base}/api/v1/messages/{ids[0]}") as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 2.0

    for message_id in ids:
        recipient = await until_state(http, base, message_id, {"sent", "delivered"}, within=20)
        assert recipient["route"] == fallback
    # Nothing lost: the fallback took each number once. Nothing twice unless the faulty
    # provider took a send whose answer goipd never got, and each of those is counted.
    taken = _taken(clouds, fallback)
    assert len(taken) == len(set(taken)) == len(numbers)
    text = await metrics(http, base)
    ambiguous = sample(text, "goipd_dispatch_ambiguous_total") or 0
    assert len(_taken(clouds, provider)) <= ambiguous
    if mode not in AMBIGUOUS_FAULTS:
        assert _taken(clouds, provider) == []
        assert ambiguous == 0
    reason = FAULT_REASONS[mode]
    if reason is None:
        assert sample(text, "goipd_provider_disabled", provider=provider) == 1
    else:
        errors = sample(
            text, "goipd_provider_errors_total", provider=provider, operation="send", reason=reason
        )
        assert (errors or 0) >= 1, f"{provider} {mode}: no send error with reason {reason}"
        assert sample(text, "goipd_provider_disabled", provider=provider) == 0

    # The fault clears: the provider is used again by itself (a disabled one after a probe
    # or a balance poll).
    await _set_fault(clouds, provider, "none")

    async def used_again() -> bool:
        again = await send(
            http, base, {"to": [numbers[0]], "text": f"after {mode} {time.monotonic()}"}
        )
        await asyncio.sleep(0.3)
        body = await message(http, base, again["id"])
        return body["recipients"][0]["route"] == provider

    await eventually(used_again, 15, f"{provider} used again after {mode} cleared")
    assert sample(await metrics(http, base), "goipd_provider_disabled", provider=provider) == 0


async def test_balance_poll_reenables_only_what_credit_fixes(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    # provider_probe_interval stays at its default (10m): within this test only a balance
    # poll (every 500ms) can put c123 back into routing.
    daemon, base = await cloud_goipd([{"via": [{"cloud": "c123"}, {"cloud": "paasoo"}]}])
    sim = clouds.c123.sim

    # A frozen account (109 on /tx/ only) still answers /mm/ with credit: that proves nothing
    # about the freeze, so the balance polls must not send more messages into the refusal.
    sim.set_fault("code", code="109")
    first = await send(http, base, {"to": [CN], "text": "frozen account"})
    assert (await until_state(http, base, first["id"], {"sent", "delivered"}))["route"] == "paasoo"
    assert sim.counters["tx_109"] == 1
    await asyncio.sleep(2.0)
    text = await metrics(http, base)
    assert sample(text, "goipd_provider_balance", provider="c123") == sim.balance > 0
    assert sample(text, "goipd_provider_disabled", provider="c123") == 1
    second = await send(http, base, {"to": [CN], "text": "still frozen"})
    assert (await until_state(http, base, second["id"], {"sent", "delivered"}))["route"] == (
        "paasoo"
    )
    assert sim.counters["tx_109"] == 1

    # Out of credit: the balance poll that finds credit again is what fixed it. A reload
    # re-enables every provider; c123 is then refused for credit instead.
    assert await daemon.reload()
    sim.set_fault("no_credit")
    third = await send(http, base, {"to": [CN], "text": "no credit"})
    assert (await until_state(http, base, third["id"], {"sent", "delivered"}))["route"] == "paasoo"
    assert sim.counters["tx_102"] == 1
    sim.set_fault("none")

    async def reenabled() -> bool:
        text = await metrics(http, base)
        return sample(text, "goipd_provider_disabled", provider="c123") == 0

    await eventually(reenabled, 5, "c123 re-enabled by a balance poll with credit")
    fourth = await send(http, base, {"to": [CN], "text": "topped up"})
    assert (await until_state(http, base, fourth["id"], {"sent", "delivered"}))["route"] == "c123"


async def test_smsgo_status_query_recovers_a_missing_report(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}], smsgo_reports=False)
    clouds.smsgo.sim.set_dlr(status={"0912345679": "UNDELIV"})
    ok = await send(http, base, {"to": [TW], "text": "no report will come"})
    bad = await send(http, base, {"to": ["+886912345679"], "text": "nor for this one"})
    assert (await until_state(http, base, ok["id"], {"sent"}))["route"] == "smsgo"
    # reconcile.query_after is 2s in tests: the status query settles both.
    delivered = await until_state(http, base, ok["id"], {"delivered"}, within=15)
    failed = await until_state(http, base, bad["id"], {"failed"}, within=15)
    assert delivered["upstream_id"] and failed["error"]["code"] == "UNDELIV"
    assert not clouds.smsgo.sim.dlr_log  # nothing was pushed
    operations = {r["operation"] for r in clouds.smsgo.sim.requests}
    assert operations & {"query.asp", "queryBulk.asp"}


def _in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


async def test_scheduled_send_stays_in_goipd_without_schedule_ahead(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}])
    # Held by goipd: the route starts with smsgo but smsgo.schedule_ahead is 0 (the default).
    kept = await send(http, base, {"to": [TW], "text": "kept here", "send_at": _in(600)})
    await asyncio.sleep(1.0)
    assert (await message(http, base, kept["id"]))["recipients"][0]["state"] == "queued"
    assert not clouds.smsgo.sim.sends


async def test_scheduled_send_handover_and_cancel(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    configured = providers(clouds)
    configured["smsgo"]["schedule_ahead"] = "1h"
    configured["c123"]["schedule_ahead"] = "1h"
    daemon, base = await cloud_goipd(
        [
            {"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}]},
            {"match": {"prefix": ["+8869"]}, "via": [{"cloud": "smsgo"}]},
            {"via": [{"server": "hq"}, {"cloud": "smsgo"}]},
        ],
        providers=configured,
    )
    handed = await send(http, base, {"to": [TW], "text": "at ten", "send_at": _in(600)})
    recipient = await until_state(http, base, handed["id"], {"submitted"})
    msgid = recipient["upstream_id"]
    assert recipient["route"] == "smsgo" and msgid
    held = clouds.smsgo.sim.messages[msgid]
    assert held.dlvtime is not None and abs(held.dlvtime - (time.time() + 600)) < 5
    # Too far ahead, or a route starting with own SIMs: goipd keeps it until it is due.
    later = await send(http, base, {"to": [TW], "text": "tomorrow", "send_at": _in(7200)})
    own = await send(http, base, {"to": [SG], "text": "own sims", "send_at": _in(600)})
    china = await send(http, base, {"to": [CN], "text": "定时", "send_at": _in(600)})
    in_china = await until_state(http, base, china["id"], {"submitted"})
    assert in_china["route"] == "c123" and clouds.c123.sim.sent[0]["time"]
    await asyncio.sleep(0.5)
    for kept in (later, own):
        assert (await message(http, base, kept["id"]))["recipients"][0]["state"] == "queued"

    # DELETE cancels the handed-over send at smsgo.
    async with http.delete(f"{base}/api/v1/messages/{handed['id']}") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["recipients"][0]["state"] == "cancelled"
    assert set(held.states.values()) == {"DELETED"}
    # c123 cannot cancel a scheduled send: a clear 409, and the recipient stays submitted.
    async with http.delete(f"{base}/api/v1/messages/{china['id']}") as resp:
        assert resp.status == 409
        assert "could not cancel" in (await resp.json())["detail"]
    assert (await message(http, base, china["id"]))["recipients"][0]["state"] == "submitted"


async def test_reload_adds_and_removes_providers(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}])
    first = await send(http, base, {"to": [SG], "text": "through smsgo"})
    assert (await until_state(http, base, first["id"], {"delivered"}))["route"] == "smsgo"
    assert daemon.settings.source is not None
    config = yaml.safe_load(daemon.settings.source.read_text())
    del config["providers"]["smsgo"]
    config["routes"] = [{"via": [{"cloud": "paasoo"}]}]
    daemon.settings.source.write_text(yaml.safe_dump(config))
    assert await daemon.reload()
    assert daemon.router.clouds == {"paasoo", "c123"}
    assert daemon.clouds.get("smsgo") is None
    second = await send(http, base, {"to": [SG], "text": "through paasoo"})
    assert (await until_state(http, base, second["id"], {"delivered"}))["route"] == "paasoo"
    text = await metrics(http, base)
    assert sample(text, "goipd_provider_disabled", provider="smsgo") is None
    assert sample(text, "goipd_provider_disabled", provider="paasoo") == 0
    # A route naming a provider that is not configured is refused; the old config stays.
    config["routes"] = [{"via": [{"cloud": "smsgo"}]}]
    daemon.settings.source.write_text(yaml.safe_dump(config))
    assert not await daemon.reload()
    assert daemon.router.clouds == {"paasoo", "c123"}


async def test_smsgo_report_before_the_send_is_recorded_is_held_and_applied(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    daemon, base = await cloud_goipd([{"via": [{"cloud": "smsgo"}]}])
    # smsgo's own report comes much later: the one that decides is the early one below.
    clouds.smsgo.sim.set_dlr(delay=60)
    assert not clouds.smsgo.sim.messages
    msgid = str(FIRST_MSGID + 1)  # the id the simulator gives its next send
    report = f"{base}/hooks/smsgo/report/{SMSGO_HOOK}"
    query = {"msgid": msgid, "statusstr": "UNDELIV", "statuscode": "0", "dstaddr": "0912345678"}
    async with http.get(report, params=query) as resp:
        # smsgo repeats a report until it reads exactly this, held or not.
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert await resp.text() == f"magicid=tccrd_sms_gateway_rpack\nmsgid={msgid}\n"
    assert len(daemon.held_reports) == 1
    text = await metrics(http, base)
    assert sample(text, "goipd_cloud_reports_held_total", provider="smsgo", outcome="held") == 1

    sent = await send(http, base, {"to": [TW], "text": "answer recorded after its report"})
    failed = await until_state(http, base, sent["id"], {"failed"}, within=5)
    assert failed["upstream_id"] == msgid and failed["error"]["code"] == "UNDELIV"
    assert len(daemon.held_reports) == 0
    text = await metrics(http, base)
    assert sample(text, "goipd_cloud_reports_held_total", provider="smsgo", outcome="matched") == 1
    assert sample(text, "goipd_sms_undelivered_total", route="smsgo") == 1


async def test_failed_handover_waits_for_its_time_and_settles_without_a_report(
    cloud_goipd: Start, clouds: Clouds, http: aiohttp.ClientSession
) -> None:
    configured = providers(clouds)
    configured["c123"]["schedule_ahead"] = "1h"
    daemon, base = await cloud_goipd(
        [{"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}, {"cloud": "paasoo"}]}],
        providers=configured,
    )
    clouds.c123.sim.set_fault("http_500")
    scheduled = await send(http, base, {"to": [CN], "text": "定时", "send_at": _in(5)})

    async def refused() -> bool:
        body = await message(http, base, scheduled["id"])
        return bool(body["recipients"][0]["attempts"])

    await eventually(refused, 5, "the hand-over refused by c123")
    await asyncio.sleep(1.0)
    [waiting] = (await message(http, base, scheduled["id"]))["recipients"]
    # Not sent early through the next hop, and not tried again at once (that would have used
    # up its 6 attempts and failed it within a second at 100 ms retry delays).
    assert waiting["state"] == "queued" and waiting["attempts"] <= 4, waiting
    assert not clouds.paasoo.sim.sent and not clouds.c123.sim.sent
    clouds.c123.sim.set_fault("none")
    handed = await until_state(http, base, scheduled["id"], {"submitted"}, within=5)
    # (Due within a minute, so without c123's minute-resolution `time`: it sends at once.)
    assert handed["route"] == "c123" and len(clouds.c123.sim.sent) == 1
    # Scheduled for later: not backlog, though not final (gauges refreshed now, not in 5 s).
    await daemon.update_queue_metrics()
    text = await metrics(http, base)
    assert sample(text, "goipd_queue_oldest_age_seconds") == 0
    assert sample(text, "goipd_queue_messages", state="submitted") == 1
    # c123 sends no delivery reports: once its time has passed it is with the network.
    settled = await until_state(http, base, scheduled["id"], {"sent"}, within=15)
    assert settled["route"] == "c123" and not clouds.paasoo.sim.sent
