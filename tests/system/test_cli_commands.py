"""`goipd send`, `goipd lines` and `goipd messages show` as processes against a daemon and the
simulated fleet; and the API refuses new messages while the daemon stops."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from goipd.app import Daemon
from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import API_TOKEN, daemon_config, fleet_spec
from tests.helpers.pipeline import connect_push, send, wait_states


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
    urgent = await asyncio.to_thread(
        subprocess.run,
        [*command[:-2], "--text", "code 4711", "--priority", "3", "--valid-for", "5m", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert urgent.returncode == 0, urgent.stderr
    reply = json.loads(urgent.stdout)
    assert reply["priority"] == 3 and reply["expires_at"] is not None
    both = await asyncio.to_thread(
        subprocess.run,
        [*command, "--valid-for", "5m", "--expires-at", "2030-01-01T00:00:00Z"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    daemon.stopping = True
    async with http.post(
        f"{base}/api/v1/messages", json={"to": "+886912345678", "text": "x"}
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
    daemon.stopping = False


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
    reply = await send(
        http, base, {"to": ["+886912345678"], "text": "show me", "priority": 2, "valid_for": "1h"}
    )
    await wait_states(http, base, reply["id"], {"delivered"})
    shown = await asyncio.to_thread(goipd, "messages", "show", reply["id"], *common)
    assert shown.returncode == 0, shown.stderr
    assert "+886912345678  delivered  via hq/G101  attempts 1" in shown.stdout
    assert f"  priority 2, expires {reply['expires_at']}\n" in shown.stdout
    missing = await asyncio.to_thread(goipd, "messages", "show", "NOPE", *common)
    assert missing.returncode == 1
    assert "error 404: no message with that id" in missing.stderr


def test_a_reader_that_goes_away_is_no_error() -> None:
    """`goipd lines | head`: the pipe closes before goipd has written everything."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "goipd", "version"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
