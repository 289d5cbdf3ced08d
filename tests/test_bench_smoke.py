"""The benchmark harness still runs: every scenario once, --quick sized, figures produced.

No performance is asserted (the machine running the tests may be busy); bench/RESULTS.md is
never written: the results go to a temporary file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
EXPECTED = {
    1: ("throughput", "latency p99"),
    2: ("throughput", "answered 200 / recipients now sent"),
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
