"""goipd as systemd runs it: a subprocess with its own NOTIFY_SOCKET, reloaded with SIGHUP,
stopped with SIGTERM; its logs never contain a configured secret."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from goipd.sim.goip import RunningSimulator
from tests.helpers.daemons import API_TOKEN, fleet_spec
from tests.helpers.processes import free_port

SECRETS = ("pw-hq", "pw-branch", "hook-hq-0123456789", API_TOKEN)


def config(sim: RunningSimulator, port: int, db: Path, servers: list[str]) -> dict[str, Any]:
    return {
        "http": {"listen": f"127.0.0.1:{port}", "api_tokens": [API_TOKEN]},
        "storage": {"url": f"sqlite:///{db}"},
        "logging": {"format": "json", "level": "debug"},
        "servers": [
            {
                "name": name,
                "url": sim.base_url(name),
                "username": "root",
                "password": f"pw-{name}",
                "poll_interval": "500ms",
                "timeout": "300ms",
                "hook_token": f"hook-{name}-0123456789",
            }
            for name in servers
        ],
    }


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, prefix: str, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for message in self.drain():
                if message.startswith(prefix) or f"\n{prefix}" in message:
                    self.messages.remove(message)
                    return message
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {prefix!r} notification; got {self.messages}")


async def test_notify_reload_stop_and_no_secret_in_logs(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    sim = await simulator(
        fleet_spec(
            hq=[{"line_id": "G101"}, {"line_id": "G102", "reg": ""}], branch=[{"line_id": "G201"}]
        )
    )
    port = free_port()
    path = tmp_path / "goipd.yaml"
    path.write_text(yaml.safe_dump(config(sim, port, tmp_path / "goipd.db", ["hq"])))
    path.chmod(0o600)
    notify = NotifySocket(tmp_path / "notify.sock")
    log_path = tmp_path / "goipd.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goipd", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        ready = await notify.wait_for("READY=1")
        assert "STATUS=1/1 servers up, 1/2 lines registered, 0 queued" in ready
        await notify.wait_for("WATCHDOG=1", within=3)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
            async with http.post(
                f"{base}/api/v1/messages", json={"to": "+886912345678", "text": "before reload"}
            ) as resp:
                assert resp.status == 202
            # Reload: add a server.
            path.write_text(
                yaml.safe_dump(config(sim, port, tmp_path / "goipd.db", ["hq", "branch"]))
            )
            proc.send_signal(signal.SIGHUP)
            reloading = await notify.wait_for("RELOADING=1")
            assert "MONOTONIC_USEC=" in reloading
            await notify.wait_for("READY=1")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                async with http.get(f"{base}/api/v1/lines?server=branch") as resp:
                    if resp.status == 200 and (await resp.json())["lines"]:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("reloaded server branch is not polled")
            # An invalid config is refused; the old one keeps running.
            path.write_text("servers: [{name: 'BAD NAME'}]\n")
            proc.send_signal(signal.SIGHUP)
            await notify.wait_for("RELOADING=1")
            await notify.wait_for("READY=1")
            async with http.get(f"{base}/api/v1/lines?server=branch") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/api/v1/lines") as resp:
                body = await resp.text()
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = log_path.read_text()
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    names = {event["event"] for event in events}
    assert {
        "config_reloaded",
        "config_reload_rejected",
        "daemon_ready",
        "daemon_stopped",
        "sim_logged_out",
    } - names <= {"sim_logged_out"}
    assert all({"event", "level", "timestamp"} <= set(event) for event in events)
    rejected = next(e for e in events if e["event"] == "config_reload_rejected")
    assert any("servers[0].name" in problem for problem in rejected["problems"])
    for secret in SECRETS:
        assert secret not in logs, f"secret {secret!r} in logs"
        assert secret not in body and secret not in metrics
