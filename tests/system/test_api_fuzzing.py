"""schemathesis generates requests from /api/v1/openapi.json against a running goipd: whatever
it sends, goipd never answers 5xx and never logs an error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers.daemons import API_TOKEN
from tests.helpers.processes import free_port

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(
    SCHEMATHESIS is None, reason="schemathesis not installed (pip install -e .[dev])"
)
def test_api_survives_generated_requests(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "goipd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http": {"listen": f"127.0.0.1:{port}", "api_tokens": [API_TOKEN]},
                "storage": {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
                "logging": {"format": "json"},
            }
        )
    )
    config.chmod(0o600)
    log = tmp_path / "goipd.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "goipd", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        assert SCHEMATHESIS is not None
        result = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{base}/api/v1/openapi.json",
                "-H",
                f"Authorization: Bearer {API_TOKEN}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "40",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:]
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    errors = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"level": "error"' in line
    ]
    assert errors == []
