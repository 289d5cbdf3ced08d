"""What goipd learns of SIMs and does to their modules, as both backends store it (the
`LineUpkeep` role of base.py): each line's last prepaid balance (goipd/fleet/balances.py) and
the automatic reboots of stuck lines (goipd/fleet/remediation.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BALANCE_COLUMNS = "server, line, balance, answer, read_at, error_reason, error, error_at"
REMEDIATION_COLUMNS = (
    "server, line, incident_since, incident, action, owner, started_at, result, finished_at, detail"
)
PENDING = "pending"
"""A remediation whose action was taken and whose line is being waited for."""


@dataclass(frozen=True, slots=True)
class LineBalance:
    server: str
    line: str
    balance: float | None
    """The last balance read; None if none was ever read."""
    answer: str | None
    """The carrier's answer it was read from."""
    read_at: float | None
    error_reason: str | None
    """Why the latest read failed, when it did after the last good one (ErrorReason value)."""
    error: str | None
    error_at: float | None


@dataclass(frozen=True, slots=True)
class Remediation:
    server: str
    line: str
    incident_since: float
    """When the line went bad: with the line, what makes one incident."""
    incident: str
    """unregistered or quarantined."""
    action: str
    """reboot_module."""
    owner: str
    """The instance that acted."""
    started_at: float
    result: str
    """pending, recovered, failed (the line did not come back), or refused (the SMS Server
    did not take the command)."""
    finished_at: float | None
    detail: str | None


def balance_from_row(row: Sequence[Any]) -> LineBalance:
    return LineBalance(str(row[0]), str(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])


def remediation_from_row(row: Sequence[Any]) -> Remediation:
    return Remediation(
        str(row[0]),
        str(row[1]),
        float(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        float(row[6]),
        str(row[7]),
        row[8],
        row[9],
    )
