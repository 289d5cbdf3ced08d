"""The benchmark harness still runs: every scenario once, --quick sized, figures produced.

No performance is asserted (the machine running the tests may be busy); bench/RESULTS.md is
never written: the results go to a temporary file.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.repo import REPO

RESULTS = REPO / "bench" / "RESULTS.md"
FLOOR = "durable floor: bare handler + group-committed SQLite write"
EXPECTED = {
    1: ("throughput", "latency p99", FLOOR),
    2: ("throughput", "answered 200 / recipients now sent", FLOOR),
    3: ("single: 200 x 1-recipient messages",),
    4: ("goipd CPU (share of one core)", "servers polled every interval", "RSS peak"),
    5: ("scrape time p50", "accept latency p99 while scraping"),
    6: ("choose + record_use",),
}


def _snapshot() -> bytes | None:
    return RESULTS.read_bytes() if RESULTS.exists() else None


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_runs_quick(scenario: int, tmp_path: Path) -> None:
    before = _snapshot()
    results = tmp_path / "RESULTS.md"
    figures = tmp_path / "figures.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--scenario",
            str(scenario),
            "--results",
            str(results),
            "--json",
            str(figures),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    produced = json.loads(figures.read_text())[str(scenario)]
    for metric in EXPECTED[scenario]:
        assert produced.get(metric), f"scenario {scenario}: no figure for {metric!r}: {produced}"
    text = results.read_text()
    assert f"<!-- bench:{scenario} start -->" in text
    assert "| metric | goipd | baseline |" in text
    assert _snapshot() == before, "the smoke test must not touch bench/RESULTS.md"


def test_durable_floor_has_stored_what_it_answered(tmp_path: Path) -> None:
    """The floor is only a floor if it really writes before it answers."""
    store = tmp_path / "floor.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--store", str(store)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]

        def post(path: str, body: dict[str, object]) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                status: int = response.status
                return status

        assert post("/api/v1/messages", {"to": ["+886912345678"], "text": "hi"}) == 202
        assert post("/hooks/goip/s1/status", {"taskID": 7, "send": "succeeded"}) == 200
        # Read while the server still runs: answered means committed.
        conn = sqlite3.connect(store)
        try:
            assert conn.execute("SELECT number, text FROM messages").fetchall() == [
                ("+886912345678", "hi")
            ]
            assert conn.execute("SELECT server, task_id, result FROM reports").fetchall() == [
                ("s1", "7", "succeeded")
            ]
        finally:
            conn.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
