"""systemd/goipd.service: loads cleanly, keeps its hardening, and scores <= 2.0 exposure.

`systemd-analyze verify` and `security --offline=yes` work without a running systemd (as in a
container): they only parse the unit and the host's unit files. scripts/ensure-systemd.sh
installs the tool on Debian.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.repo import REPO

UNIT = REPO / "systemd" / "goipd.service"
GOIPD_BIN = "/opt/goipd/bin/goipd"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (run scripts/ensure-systemd.sh as root)",
)

# Plain output: no colours, no pager, messages in English whatever the machine's locale.
ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}

HARDENING = [
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("SystemCallArchitectures", "native"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictNamespaces", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("UMask", "0077"),
    ("DevicePolicy", "closed"),
    ("RemoveIPC", "yes"),
    ("KeyringMode", "private"),
    # Deliberately empty (no IP deny list): goipd must reach SMS Servers at any LAN address.
    ("IPAddressDeny", ""),
]


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The unit's assignments per section, in order, comments and blank lines dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def sections() -> dict[str, list[tuple[str, str]]]:
    return _sections(UNIT.read_text(encoding="utf-8"))


def _values(sections: dict[str, list[tuple[str, str]]], key: str) -> list[str]:
    return [value for k, value in sections["Service"] if k == key]


def test_service_lifecycle_directives(sections: dict[str, list[tuple[str, str]]]) -> None:
    assert _values(sections, "Type") == ["notify"]
    assert _values(sections, "NotifyAccess") == ["main"]
    assert _values(sections, "WatchdogSec") == ["30s"]
    assert _values(sections, "ExecStart") == [f"{GOIPD_BIN} run --config /etc/goipd/goipd.yaml"]
    assert _values(sections, "ExecStartPre") == [f"{GOIPD_BIN} check-config /etc/goipd/goipd.yaml"]
    assert _values(sections, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _values(sections, "Restart") == ["on-failure"]
    assert _values(sections, "TimeoutStopSec") == ["30s"]
    assert ("WantedBy", "multi-user.target") in sections["Install"]


def test_identity_state_and_credentials(sections: dict[str, list[tuple[str, str]]]) -> None:
    assert _values(sections, "DynamicUser") == ["yes"]
    assert _values(sections, "StateDirectory") == ["goipd"]
    assert _values(sections, "StateDirectoryMode") == ["0700"]
    assert _values(sections, "ConfigurationDirectory") == ["goipd"]
    credentials = _values(sections, "LoadCredential")
    assert "hq.password:/etc/goipd/credentials/hq.password" in credentials
    assert any(value.startswith("api.tokens:") for value in credentials)


@pytest.mark.parametrize(("key", "value"), HARDENING, ids=[f"{k}={v}" for k, v in HARDENING])
def test_hardening_directive(
    sections: dict[str, list[tuple[str, str]]], key: str, value: str
) -> None:
    assert value in _values(sections, key)


def _verify(unit_dir: Path, text: str, fake_bin: Path) -> list[str]:
    """Runs `systemd-analyze verify` on a copy of the unit whose goipd commands point at an
    existing executable: verify rejects Exec*= binaries that are not installed, and goipd is
    not installed at /opt/goipd on a development machine. The file name stays goipd.service.
    Everything else (/bin/kill, the targets, every directive) is checked as shipped."""
    copy = unit_dir / "goipd.service"
    copy.write_text(text.replace(GOIPD_BIN, str(fake_bin)), encoding="utf-8")
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for unknown keys and unparsable values ("..., ignoring"): the output
    # is what tells. Lines about other units (the host's own unit files, which verify loads as
    # dependencies, e.g. multi-user.target) are not this unit's problem and are left out.
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if "goipd" in line]
    assert result.returncode == 0 or ours, lines
    return ours


@pytest.fixture
def fake_goipd(tmp_path: Path) -> Path:
    fake = tmp_path / "bin" / "goipd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake.chmod(0o755)
    return fake


def test_verify_is_clean(tmp_path: Path, fake_goipd: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    assert _verify(units, UNIT.read_text(encoding="utf-8"), fake_goipd) == []


def test_verify_would_catch_a_broken_unit(tmp_path: Path, fake_goipd: Path) -> None:
    # The clean result above means something only if verify reports problems in this set-up.
    units = tmp_path / "units"
    units.mkdir()
    broken = UNIT.read_text(encoding="utf-8").replace(
        "ProtectSystem=strict", "ProtectSystem=very\nProtectEverything=yes"
    )
    problems = "\n".join(_verify(units, broken, fake_goipd))
    assert "ProtectEverything" in problems
    assert "very" in problems


def test_security_exposure(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    if "--offline" in output and ("unrecognized" in output or "Unknown option" in output):
        pytest.skip("this systemd-analyze has no security --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for goipd\.service: (\d+\.\d+)", output)
    assert match, output
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, output
