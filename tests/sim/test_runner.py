"""`goipd simulate` (goipd.sim.runner): refuses hosts other than loopback, serves until SIGTERM."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

from goipd.sim.runner import main_simulate


def test_runner_refuses_non_loopback_hosts() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.com"):
        assert main_simulate(["--host", host, "--demo"]) == 2


@contextlib.contextmanager
def demo_simulator(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`goipd simulate --demo ARGS` as a process, and the base URL of its control API."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "goipd.sim.runner", "--port", "0", "--demo", *args),
            *("--log-level", "warning"),
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
        yield proc, url.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def control_get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}/_control/{path}", timeout=5) as resp:
        return json.loads(resp.read())


def test_runner_serves_until_sigterm() -> None:
    with demo_simulator() as (proc, base):
        assert control_get(base, "servers") == ["taipei", "kaohsiung", "shenzhen"]
        # The v1.28.4 profile is the default, with php-mbstring.
        state = control_get(base, "servers/taipei")
        assert (state["profile"], state["mbstring"]) == ("v1.28.4", True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_runner_applies_profile_and_mbstring_to_every_server() -> None:
    with demo_simulator("--profile", "document", "--no-mbstring") as (_, base):
        for name in control_get(base, "servers"):
            state = control_get(base, f"servers/{name}")
            assert (state["profile"], state["mbstring"]) == ("document", False)


def test_runner_refuses_a_wildcard_and_a_foreign_address() -> None:
    assert main_simulate(["--host", "0.0.0.0", "--demo"]) == 2
    assert main_simulate(["--host", "192.0.2.1", "--demo"]) == 2
