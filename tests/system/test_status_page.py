"""The status page in a real headless Chromium, against goipd and the GoIP simulator running as
their own processes: the grid shows each server's lines by state as the simulator reports them,
a manual quarantine, a failed recipient with its CMS meaning and a server that is down; a wrong
token gets the login form; a screenshot lands in the test's temporary directory; and no
Chromium process outlives its run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from tests.helpers.daemons import API_TOKEN
from tests.helpers.processes import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (make tools runs scripts/ensure-chromium.sh)"
)

# What the simulator reports, and therefore what the page must show (G104 is quarantined by
# hand in the test, G108 fails every send with CMS 1, which is a recipient error: no effect on
# the line's state).
HQ_LINES: list[dict[str, Any]] = [
    {"line_id": "G101"},
    {"line_id": "G102", "remain_sms": 500, "day_remain_sms": 40},
    {"line_id": "G103"},
    {"line_id": "G104"},
    {"line_id": "G105", "reg": "LOGOUT"},
    {"line_id": "G106", "online": False, "reg": ""},
    {"line_id": "G107", "remain_sms": 300, "day_remain_sms": 0},
    {"line_id": "G108", "fail_code": "1"},
]
BRANCH_LINES: list[dict[str, Any]] = [
    {"line_id": "G201"},
    {"line_id": "G202"},
    {"line_id": "G203", "reg": ""},
    {"line_id": "G204", "online": False, "reg": ""},
]
EXPECTED = {
    "hq": {
        "registered": 4,
        "quarantined": 1,
        "logged_out": 1,
        "offline": 1,
        "quota_exhausted": 1,
    },
    "branch": {"registered": 2, "logged_out": 1, "offline": 1},
    "lab": {},
}


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        time.sleep(0.1)


def request(
    method: str, url: str, body: Any = None, token: str | None = API_TOKEN
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if "json" in resp.headers["Content-Type"] else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    base: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port, sim_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    spec = {
        "servers": [
            {
                "name": name,
                "username": "root",
                "password": f"pw-{name}",
                "lines": lines,
                "send_delay": 0.02,
                "receipt_delay": 0.02,
                "status_push_url": f"{base}/hooks/goip/{name}/status?token=hook-{name}-0123456789",
            }
            for name, lines in (("hq", HQ_LINES), ("branch", BRANCH_LINES))
        ]
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec))
    config = {
        "http": {"listen": f"127.0.0.1:{port}", "api_tokens": [API_TOKEN]},
        "storage": {"url": f"sqlite:///{tmp_path / 'goipd.db'}"},
        "logging": {"format": "json"},
        "polling": {"jitter": 0.0, "backoff_max": "1s"},
        "servers": [
            {
                "name": name,
                # "lab" is not in the simulated fleet: the simulator answers 404, goipd sees it down.
                "url": f"http://127.0.0.1:{sim_port}/{name}",
                "username": "root",
                "password": f"pw-{name}",
                # One poll that times out shows its server down until the next: 300 ms was
                # too short while chromium starts on the same two cores (branch shown down).
                "poll_interval": "2s",
                "timeout": "1500ms",
                "hook_token": f"hook-{name}-0123456789",
            }
            for name in ("hq", "branch", "lab")
        ],
    }
    (tmp_path / "goipd.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "goipd.yaml").chmod(0o600)
    running = Stack(base, tmp_path)
    commands = [
        ["simulate", "--spec", str(tmp_path / "fleet.yaml"), "--port", str(sim_port)],
        ["run", "--config", str(tmp_path / "goipd.yaml")],
    ]
    try:
        for name, args in zip(("simulator", "goipd"), commands, strict=True):
            with (tmp_path / f"{name}.log").open("wb") as log:
                running.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "goipd", *args],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            if name == "simulator":
                wait_for(
                    lambda: reachable(f"http://127.0.0.1:{sim_port}/_control/servers"),
                    20,
                    "simulator listening",
                )
        wait_for(lambda: reachable(f"{base}/readyz"), 30, "goipd ready")
        yield running
    finally:
        for proc in reversed(running.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class DomSummary(HTMLParser):
    """What the rendered page shows: per server its count labels and its grid cells."""

    def __init__(self) -> None:
        super().__init__()
        self.server: str | None = None
        self.counts: dict[str, dict[str, int]] = {}
        self.cells: dict[str, Counter[str]] = {}
        self.manual: set[str] = set()
        self.badges: dict[str, str] = {}
        self.hidden: set[str] = set()
        self.ready: str | None = None
        self.text: list[str] = []
        self.login_message = ""
        self._count: str | None = None
        self._badge = False
        self._code = False
        self._login_message = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.ready = a.get("data-ready")
        self._code = tag in ("script", "style")
        self._login_message = a.get("id") == "login-message"
        if a.get("id") and "hidden" in a:
            self.hidden.add(str(a["id"]))
        if "server" in classes and a.get("data-server"):
            self.server = a["data-server"]
            self.counts[self.server] = {}
            self.cells[self.server] = Counter()
        elif self.server and "cell" in classes:
            self.cells[self.server][str(a["data-state"])] += 1
            if "manual" in classes:
                self.manual.add(f"{self.server}/{a['data-line']}")
        elif self.server and a.get("data-count"):
            self._count = a["data-count"]
        elif self.server and "badge" in classes:
            self._badge = True

    def handle_endtag(self, tag: str) -> None:
        self._code = self._login_message = False

    def handle_data(self, data: str) -> None:
        if self._code:
            return  # the page's own source is not what it shows
        if self._login_message:
            self.login_message += data
        self.text.append(data)
        if self._count and self.server:
            self.counts[self.server][self._count] = int(data)
            self._count = None
        if self._badge and self.server:
            self.badges[self.server] = data
            self._badge = False


def run_chromium(tmp: Path, url: str, *extra: str) -> str:
    """One headless Chromium run in its own session; afterwards nothing of it may be left."""
    assert CHROMIUM is not None
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    home = tmp / "chromium-home"
    home.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            # Virtual time stands still while the page's fetches are pending, so the budget
            # covers the first render and one refresh whatever the machine's load.
            "--virtual-time-budget=7000",
            *extra,
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        leftovers = _kill_group(proc)
    assert leftovers == 0, f"{leftovers} chromium processes outlived the run"
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that still run; zombies (already dead, waiting for whoever
    adopted them to reap them) do not count."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _kill_group(proc: subprocess.Popen[bytes]) -> int:
    """Give the rest of the run's process group (zygotes, renderers, crash handler) a moment
    to exit after the browser did, then kill what is left; returns how many were left."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while (left := _live_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    return len(left)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@needs_chromium
def test_status_page_shows_the_fleet(stack: Stack) -> None:
    base = stack.base
    # The shell is public and carries no data: no server or line name in it.
    with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
        shell = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert "G101" not in shell and "branch" not in shell
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp

    status, reply = request(
        "PUT", f"{base}/api/v1/lines/hq/G104/quarantine", {"reason": "SIM swap"}
    )
    assert status == 200, reply
    status, reply = request(
        "POST",
        f"{base}/api/v1/messages",
        {
            "to": ["+886912000001"],
            "text": "to a number that does not exist",
            "route": {"server": "hq", "line": "G108"},
        },
    )
    assert status == 202, reply
    message_id = reply["id"]

    def failed() -> bool:
        return (
            request("GET", f"{base}/api/v1/messages/{message_id}")[1]["recipients"][0]["state"]
            == "failed"
        )

    wait_for(failed, 20, "the send through G108 failed with CMS 1")
    # The overview's queue figures are the metrics', refreshed every 5 s.
    wait_for(
        lambda: request("GET", f"{base}/api/v1/status")[1]["queue"]["failed"] == 1,
        15,
        "the failed recipient counted in the status overview",
    )
    wait_for(
        lambda: (
            not request("GET", f"{base}/api/v1/status")[1]["servers"][2]["up"]
            and request("GET", f"{base}/api/v1/status")[1]["servers"][2]["polled"]
        ),
        10,
        "lab polled and down",
    )

    _, overview = request("GET", f"{base}/api/v1/status")
    counts = {s["server"]: s["counts"] for s in overview["servers"]}
    assert counts["hq"] == {
        "registered": 5,  # G104 included: quarantine is not a state of the line itself
        "logged_out": 1,
        "offline": 1,
        "quota_exhausted": 1,
        "gone": 0,
        "quarantined": 1,
        "healthy": 4,
    }
    assert counts["lab"]["registered"] == 0
    assert overview["manual_quarantines"] == [
        {"server": "hq", "line": "G104", "reported": True, "reason": "SIM swap", "since": ANY}
    ]
    assert overview["providers"] == []

    dom = DomSummary()
    dom.feed(run_chromium(stack.tmp, f"{base}/#token={API_TOKEN}", "--dump-dom"))
    assert dom.ready == "true", "the page never rendered"
    assert "app" not in dom.hidden and "login" in dom.hidden
    assert set(dom.counts) == set(EXPECTED)
    for server, expected in EXPECTED.items():
        shown = {state: n for state, n in dom.counts[server].items() if n}
        assert shown == expected, f"{server}: count labels {shown}, expected {expected}"
        assert dict(dom.cells[server]) == expected, f"{server}: grid {dom.cells[server]}"
    assert dom.manual == {"hq/G104"}
    assert dom.badges == {"hq": "up", "branch": "up", "lab": "down"}
    text = " ".join(dom.text)
    assert "http_status" in text  # lab's last error
    assert "Unassigned (unallocated) number" in text  # the failed recipient's CMS 1 meaning
    assert "+886912000001" in text and "SIM swap" in text
    assert "No cloud providers configured." in text
    assert API_TOKEN not in text

    screenshot = stack.tmp / "status.png"
    run_chromium(
        stack.tmp,
        f"{base}/#token={API_TOKEN}",
        f"--screenshot={screenshot}",
        "--window-size=1280,1024",
    )
    assert png_size(screenshot) == (1280, 1024)
    # A blank or error page compresses to a few kB; the rendered fleet does not.
    assert screenshot.stat().st_size > 20_000


@needs_chromium
@pytest.mark.parametrize("fragment", ["", "#token=not-the-right-token-at-all"])
def test_without_a_valid_token_the_page_asks_for_one(stack: Stack, fragment: str) -> None:
    dom = DomSummary()
    dom.feed(run_chromium(stack.tmp, f"{stack.base}/{fragment}", "--dump-dom"))
    assert dom.ready == "login"
    assert "login" not in dom.hidden and "app" in dom.hidden
    assert dom.counts == {}
    assert dom.login_message == ("goipd refused that token." if fragment else "")
    assert "G101" not in " ".join(dom.text)
