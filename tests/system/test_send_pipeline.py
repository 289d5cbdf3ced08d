"""The send pipeline end to end: API → ledger → routing → sendsms → push reports → final state,
against the simulated fleet over loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goipd.app import Daemon
from goipd.ledger.postgres import PostgresLedger
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually, sample
from tests.helpers.daemons import control, daemon_config, fleet_spec
from tests.helpers.ledgers import PG_URL
from tests.helpers.pipeline import connect_push, message, send, sent_log, wait_states

Pipeline = tuple[RunningSimulator, Daemon, str]


@pytest.fixture
async def pipeline(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> Pipeline:
    sim = await simulator(
        fleet_spec(
            hq=[{"line_id": "G101"}, {"line_id": "G102"}, {"line_id": "G103"}],
            branch=[{"line_id": "G201"}],
        )
    )
    config = daemon_config(
        sim,
        ["hq", "branch"],
        tmp_path,
        routing={
            "retry_delay": "100ms",
            "line_rate_per_minute": 600,
            "quarantine_after": 2,
            "quarantine_for": "1m",
        },
        api={"duplicate_window": "0s"},
    )
    daemon = await daemon_factory(config)
    await connect_push(http, sim, daemon, ["hq", "branch"])
    return sim, daemon, f"http://127.0.0.1:{daemon.port}"


async def test_message_is_sent_and_delivered(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, daemon, base = pipeline
    reply = await send(http, base, {"to": ["+886912345678", "0912345679"], "text": "hello"})
    assert reply["segments"] == 1 and reply["encoding"] == "GSM-7"
    assert [r["to"] for r in reply["recipients"]] == ["+886912345678", "+886912345679"]
    assert {r["state"] for r in reply["recipients"]} == {"queued"}
    done = await wait_states(http, base, reply["id"], {"delivered"})
    for recipient in done["recipients"]:
        assert recipient["route"] == "goip"
        assert recipient["server"] in ("hq", "branch")
        assert recipient["task_id"] and recipient["upstream_id"].startswith(recipient["task_id"])
        assert recipient["delivered_at"] and recipient["sent_at"]
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert sample(metrics, "goipd_messages_accepted_total") == 2
    delivered = sum(
        sample(metrics, "goipd_sms_delivered_total", route="goip", server=s, line=line) or 0
        for s, line in (("hq", "G101"), ("hq", "G102"), ("hq", "G103"), ("branch", "G201"))
    )
    assert delivered == 2


async def test_logged_out_sim_gets_no_more_traffic(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, daemon, base = pipeline
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"reg": "LOGOUT"})

    async def noticed() -> bool:
        line = daemon.registry.line("hq", "G101")
        return line is not None and not line.registered

    await eventually(noticed, 2.0, "logout noticed by the poller")
    ids = [
        (await send(http, base, {"to": [f"+88691234{i:04d}"], "text": f"m{i}"}))["id"]
        for i in range(12)
    ]
    for message_id in ids:
        await wait_states(http, base, message_id, {"delivered"})
    lines = [entry["goip_line"] for entry in await sent_log(http, sim, "hq")]
    assert "G101" not in lines
    assert len(lines) + len(await sent_log(http, sim, "branch")) == 12


async def test_line_with_cms_331_is_quarantined_and_traffic_moves(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, daemon, base = pipeline
    await control(http, sim, "PATCH", "servers/hq/lines/G101", {"fail_code": "331"})
    ids = [
        (await send(http, base, {"to": [f"+88691234{i:04d}"], "text": f"q{i}"}))["id"]
        for i in range(12)
    ]
    for message_id in ids:
        done = await wait_states(http, base, message_id, {"delivered"})
        assert done["recipients"][0]["line"] != "G101" or done["recipients"][0]["server"] != "hq"
    line = daemon.registry.line("hq", "G101")
    assert line is not None and line.quarantined_until > 0
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert sample(metrics, "goipd_line_healthy", server="hq", line="G101") == 0
    failures = [e for e in await sent_log(http, sim, "hq") if e["goip_line"] == "G101"]
    # Sends already in flight when the second error report arrived also fail: >= 2, and every
    # one of them is counted by code.
    assert len(failures) >= 2
    assert sample(metrics, "goipd_cms_errors_total", server="hq", line="G101", code="331") == len(
        failures
    )
    # Once quarantined, the line gets no traffic at all.
    more = [
        (await send(http, base, {"to": [f"+88691235{i:04d}"], "text": f"r{i}"}))["id"]
        for i in range(12)
    ]
    for message_id in more:
        await wait_states(http, base, message_id, {"delivered"})
    after = [e for e in await sent_log(http, sim, "hq") if e["goip_line"] == "G101"]
    assert len(after) == len(failures)
    async with http.get(f"{base}/api/v1/lines?server=hq&healthy=false") as resp:
        unhealthy = (await resp.json())["lines"]
    assert unhealthy[0]["quarantine_reason"].startswith("2 line errors in a row (CMS 331)")


async def test_recipient_error_fails_without_retry(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, _, base = pipeline
    for server, line in (("hq", "G101"), ("hq", "G102"), ("hq", "G103"), ("branch", "G201")):
        await control(http, sim, "PATCH", f"servers/{server}/lines/{line}", {"fail_code": "1"})
    reply = await send(http, base, {"to": ["+886912345678"], "text": "bad number"})
    done = await wait_states(http, base, reply["id"], {"failed"})
    recipient = done["recipients"][0]
    assert recipient["attempts"] == 1
    assert recipient["error"] == {"code": "1", "meaning": "Unassigned (unallocated) number"}


async def test_reject_falls_through_to_next_route(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(
        fleet_spec(hq=[{"line_id": "G101", "provider": "cht"}], branch=[{"line_id": "G201"}])
    )
    config = daemon_config(
        sim,
        ["hq", "branch"],
        tmp_path,
        routes=[
            {
                "match": {"prefix": ["+886"]},
                "via": [{"server": "hq", "provider": "no-such-group"}, {"server": "branch"}],
            },
        ],
    )
    daemon = await daemon_factory(config)
    await connect_push(http, sim, daemon, ["hq", "branch"])
    base = f"http://127.0.0.1:{daemon.port}"
    reply = await send(http, base, {"to": ["+886912345678"], "text": "fall through"})
    done = await wait_states(http, base, reply["id"], {"delivered"})
    assert done["recipients"][0]["server"] == "branch"
    assert done["recipients"][0]["attempts"] == 2
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert (
        sample(
            metrics, "goipd_sms_sent_total", route="goip", server="hq", line="", result="rejected"
        )
        == 1
    )


async def test_lost_push_reports_are_recovered_by_querysms(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    config = daemon_config(
        sim,
        ["hq"],
        tmp_path,
        reconcile={"interval": "200ms", "query_after": "300ms", "report_deadline": "30s"},
    )
    daemon = await daemon_factory(config)
    await connect_push(http, sim, daemon, ["hq"], drop=True)
    base = f"http://127.0.0.1:{daemon.port}"
    reply = await send(http, base, {"to": ["+886912345678"], "text": "no push"})
    # The maintenance loop runs every 5 s in production; tests call it directly.
    await wait_states(http, base, reply["id"], {"submitted"})

    async def reconciled() -> bool:
        await daemon.reconciler.run_once()
        data = await message(http, base, reply["id"])
        return data["recipients"][0]["state"] == "delivered"

    await eventually(reconciled, 5.0, "querysms recovered the lost report")
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert (sample(metrics, "goipd_reconcile_queries_total", server="hq", result="ok") or 0) >= 1


async def test_duplicate_and_unknown_reports_change_nothing(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, daemon, base = pipeline
    reply = await send(http, base, {"to": ["+886912345678"], "text": "dup"})
    done = await wait_states(http, base, reply["id"], {"delivered"})
    recipient = done["recipients"][0]
    hook = (
        f"{base}/hooks/goip/{recipient['server']}/status"
        f"?token=hook-{recipient['server']}-0123456789"
    )
    for report in (
        {"taskID": recipient["upstream_id"], "goip_line": recipient["line"], "send": "succeeded"},
        {
            "taskID": recipient["upstream_id"],
            "goip_line": recipient["line"],
            "send": "failed",
            "err_code": "331",
        },
        {
            "taskID": recipient["upstream_id"],
            "goip_line": recipient["line"],
            "send": "succeeded",
            "receipt": "1",
        },
    ):
        async with http.post(hook, json=report) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
    async with http.post(hook, json={"taskID": "999999.886900000000", "send": "succeeded"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "unknown_task"
    after = await message(http, base, reply["id"])
    assert after["recipients"] == done["recipients"]
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert (
        sample(
            metrics,
            "goipd_push_reports_total",
            source=recipient["server"],
            kind="status",
            outcome="unknown_task",
        )
        == 1
    )


async def test_hooks_reject_wrong_token_and_malformed_bodies(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    _, _, base = pipeline
    async with http.post(f"{base}/hooks/goip/hq/status?token=wrong", json={}) as resp:
        assert resp.status == 401
    async with http.post(f"{base}/hooks/goip/nope/status?token=x", json={}) as resp:
        assert resp.status == 401
    hook = f"{base}/hooks/goip/hq/status?token=hook-hq-0123456789"
    async with http.post(hook, data=b"{not json") as resp:
        assert resp.status == 400
        assert "malformed send report: invalid JSON" in (await resp.json())["detail"]
    async with http.post(hook, data=b"x" * 70_000) as resp:
        assert resp.status == 413
    async with http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert (
        sample(
            metrics, "goipd_push_reports_total", source="hq", kind="status", outcome="unauthorized"
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "goipd_push_reports_total",
            source="unknown",
            kind="status",
            outcome="unauthorized",
        )
        == 1
    )


async def test_inbound_sms_is_stored_and_listed(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, _, base = pipeline
    await control(
        http,
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G102", "from_number": "10086", "content": "餘額 100 元"},
    )

    async def listed() -> bool:
        async with http.get(f"{base}/api/v1/inbound") as resp:
            items = (await resp.json())["inbound"]
        return bool(items) and items[0]["text"] == "餘額 100 元"

    await eventually(listed, 3.0, "inbound SMS listed")
    async with http.get(f"{base}/api/v1/inbound") as resp:
        item = (await resp.json())["inbound"][0]
    assert (item["source"], item["line"], item["from"]) == ("hq", "G102", "10086")
    async with http.get(f"{base}/metrics") as resp:
        assert sample(await resp.text(), "goipd_inbound_sms_total", server="hq", line="G102") == 1


async def test_idempotency_key_returns_the_original(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, _, base = pipeline
    body = {"to": ["+886912345678"], "text": "once", "idempotency_key": "order-42"}
    first = await send(http, base, body)
    again = await send(http, base, body, status=200)
    assert again["id"] == first["id"]
    await wait_states(http, base, first["id"], {"delivered"})
    total = len(await sent_log(http, sim, "hq")) + len(await sent_log(http, sim, "branch"))
    assert total == 1


async def test_scheduled_message_can_be_cancelled(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    _, _, base = pipeline
    reply = await send(
        http,
        base,
        {"to": ["+886912345678"], "text": "later", "send_at": "2099-01-01T00:00:00Z"},
        status=422,
    )
    assert reply["detail"] == "send_at: at most 30 days ahead"
    from datetime import UTC, datetime, timedelta

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    reply = await send(http, base, {"to": ["+886912345678"], "text": "later", "send_at": later})
    async with http.delete(f"{base}/api/v1/messages/{reply['id']}") as resp:
        assert resp.status == 200
        assert (await resp.json())["recipients"][0]["state"] == "cancelled"
    async with http.delete(f"{base}/api/v1/messages/{reply['id']}") as resp:
        assert resp.status == 409


async def test_recipients_of_one_message_are_batched_on_one_line(
    pipeline: Pipeline, http: aiohttp.ClientSession
) -> None:
    sim, _, base = pipeline
    numbers = [f"+8869123456{i:02d}" for i in range(5)]
    reply = await send(http, base, {"to": numbers, "text": "batch"})
    done = await wait_states(http, base, reply["id"], {"delivered"})
    assert len({(r["server"], r["line"], r["task_id"]) for r in done["recipients"]}) == 1
    entries = (await sent_log(http, sim, "hq")) + (await sent_log(http, sim, "branch"))
    assert sorted(e["number"] for e in entries) == numbers


async def test_hook_allowlist_refuses_other_addresses(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    config = daemon_config(sim, ["hq"], tmp_path)
    config["servers"][0]["hook_allow"] = ["192.0.2.0/24"]  # not loopback: pushes are refused
    daemon = await daemon_factory(config)
    hook = f"http://127.0.0.1:{daemon.port}/hooks/goip/hq/status?token=hook-hq-0123456789"
    async with http.post(hook, json={"taskID": "1.1", "send": "succeeded"}) as resp:
        assert resp.status == 401


async def test_daemon_on_postgresql(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    daemon = await daemon_factory(
        daemon_config(sim, ["hq"], tmp_path, storage={"url": PG_URL, "pg_schema": schema})
    )
    try:
        await connect_push(http, sim, daemon, ["hq"])
        base = f"http://127.0.0.1:{daemon.port}"
        reply = await send(
            http, base, {"to": ["+886912345678", "+886912345679"], "text": "via postgres"}
        )
        done = await wait_states(http, base, reply["id"], {"delivered"})
        assert {r["server"] for r in done["recipients"]} == {"hq"}
    finally:
        await daemon.stop(grace=2.0)
        await PostgresLedger(PG_URL, schema=schema).drop_schema()
