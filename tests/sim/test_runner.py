"""`goipd simulate` (goipd.sim.runner): refuses hosts other than loopback, serves until SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

from goipd.sim.runner import main_simulate


def test_runner_refuses_non_loopback_hosts() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.com"):
        assert main_simulate(["--host", host, "--demo"]) == 2


def test_runner_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "goipd.sim.runner",
            "--port",
            "0",
            "--demo",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"control API at (http://127\.0\.0\.1:\d+)/_control/servers", line)
        assert url, line
        import urllib.request

        with urllib.request.urlopen(f"{url.group(1)}/_control/servers", timeout=5) as resp:
            assert json.loads(resp.read()) == ["taipei", "kaohsiung", "shenzhen"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_runner_refuses_a_wildcard_and_a_foreign_address() -> None:
    assert main_simulate(["--host", "0.0.0.0", "--demo"]) == 2
    assert main_simulate(["--host", "192.0.2.1", "--demo"]) == 2
