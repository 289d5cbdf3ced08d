"""Inbound forwarding, report deadlines, `goipd send`, refusal while stopping, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from goipd.app import Daemon
from goipd.ledger.postgres import PostgresLedger
from goipd.runtime.netutil import bound_port
from goipd.sim.goip import RunningSimulator
from tests.conftest import API_TOKEN, control, daemon_config, eventually, fleet_spec
from tests.test_ledger import PG_URL
from tests.test_pipeline_e2e import connect_push, message, send, wait_states


async def test_inbound_sms_is_forwarded_at_least_once_with_retries(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    calls = 0

    async def webhook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503)  # the receiver is briefly down
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/inbound", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
        url = f"http://127.0.0.1:{bound_port(site)}/inbound"
        daemon = await daemon_factory(
            daemon_config(sim, ["hq"], tmp_path, inbound={"forward_urls": [url]})
        )
        await connect_push(http, sim, daemon, ["hq"])
        # Retries start at 5 s; the test moves the clock instead of waiting.
        clock = [0.0]
        daemon.forwarder.clock = lambda: time.time() + clock[0]
        await control(
            http,
            sim,
            "POST",
            "servers/hq/inbound",
            {"goip_line": "G101", "from_number": "10086", "content": "hi there"},
        )
        await eventually(lambda: asyncio.sleep(0, calls >= 1), 5, "first forward attempt")
        clock[0] = 10.0
        daemon.forwarder.wake()
        await eventually(lambda: asyncio.sleep(0, bool(received)), 5, "forwarded after retry")
        assert received[0]["from"] == "10086"
        assert received[0]["text"] == "hi there"
        assert received[0]["source"] == "hq"
        assert received[0]["line"] == "G101"
        assert isinstance(received[0]["id"], int)
        await asyncio.sleep(1.2)
        assert len(received) == 1
    finally:
        await runner.cleanup()


async def test_submitted_without_any_report_fails_with_report_timeout(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    # A send the SMS Server never finishes: its sub-task stays "sending" forever.
    sim.fleet.servers["hq"].send_delay = 3600
    daemon = await daemon_factory(
        daemon_config(
            sim,
            ["hq"],
            tmp_path,
            reconcile={"interval": "1s", "query_after": "200ms", "report_deadline": "500ms"},
        )
    )
    await connect_push(http, sim, daemon, ["hq"])
    base = f"http://127.0.0.1:{daemon.port}"
    reply = await send(http, base, {"to": ["+886912345678"], "text": "into the void"})
    await wait_states(http, base, reply["id"], {"submitted"})

    async def timed_out() -> bool:
        await daemon.reconciler.run_once()
        data = await message(http, base, reply["id"])
        return bool(data["recipients"][0]["state"] == "failed")

    await eventually(timed_out, 5, "report_timeout")
    data = await message(http, base, reply["id"])
    assert data["recipients"][0]["error"]["code"] == "report_timeout"


async def test_send_command_and_refusal_while_stopping(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))
    base = f"http://127.0.0.1:{daemon.port}"
    token = tmp_path / "token"
    token.write_text(API_TOKEN + "\n")
    command = [
        sys.executable,
        "-m",
        "goipd",
        "send",
        "--url",
        base,
        "--token-file",
        str(token),
        "--to",
        "0912345678",
        "--to",
        "+886912345679",
        "--text",
        "from cli",
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "2 recipient(s), 1 segment(s) GSM-7" in result.stdout
    assert "+886912345678  queued" in result.stdout
    bad = await asyncio.to_thread(
        subprocess.run, [*command[:-2], "--text", ""], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "error 422: text: must not be empty" in bad.stderr
    daemon.stopping = True
    async with http.post(
        f"{base}/api/v1/messages", json={"to": "+886912345678", "text": "x"}
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
    daemon.stopping = False


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


async def test_lines_and_messages_show_commands(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await simulator(
        fleet_spec(
            hq=[{"line_id": "G101", "day_remain_sms": 7}, {"line_id": "G102", "reg": "LOGOUT"}]
        )
    )
    daemon = await daemon_factory(daemon_config(sim, ["hq"], tmp_path))
    await connect_push(http, sim, daemon, ["hq"])
    base = f"http://127.0.0.1:{daemon.port}"
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    common = ["--url", base, "--token-file", str(token)]

    def goipd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "goipd", *args], capture_output=True, text=True, check=False
        )

    lines = await asyncio.to_thread(goipd, "lines", *common)
    assert lines.returncode == 0, lines.stderr
    assert "hq: up, 2 lines" in lines.stdout
    assert [row.split()[:5] for row in lines.stdout.splitlines()[2:]] == [
        ["hq", "G101", "registered", "yes", "∞"],
        ["hq", "G102", "logged_out", "no", "∞"],
    ]
    unhealthy = await asyncio.to_thread(goipd, "lines", "--unhealthy", "--json", *common)
    assert [line["line"] for line in json.loads(unhealthy.stdout)["lines"]] == ["G102"]
    reply = await send(http, base, {"to": ["+886912345678"], "text": "show me"})
    await wait_states(http, base, reply["id"], {"delivered"})
    shown = await asyncio.to_thread(goipd, "messages", "show", reply["id"], *common)
    assert shown.returncode == 0, shown.stderr
    assert "+886912345678  delivered  via hq/G101  attempts 1" in shown.stdout
    missing = await asyncio.to_thread(goipd, "messages", "show", "NOPE", *common)
    assert missing.returncode == 1
    assert "error 404: no message with that id" in missing.stderr
