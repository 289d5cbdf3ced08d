"""Alertmanager webhook notifications as Alertmanager sends them, for the renderer and the
receiver."""

from __future__ import annotations

from typing import Any

SIM_DEAD = {
    "alertname": "GoipdSimDead",
    "server": "hq",
    "line": "G101",
    "severity": "warning",
    "job": "goipd",
    "instance": "127.0.0.1:8080",
}


def alert(status: str = "firing", summary: str | None = None, **labels: str) -> dict[str, Any]:
    annotations = {} if summary is None else {"summary": summary}
    return {
        "status": status,
        "labels": labels or dict(SIM_DEAD),
        "annotations": annotations,
        "startsAt": "2026-11-20T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "c6a0b4b3e5c1f2a7",
    }


def payload(
    *alerts: dict[str, Any],
    status: str = "firing",
    receiver: str = "oncall",
    group_key: str = '{}:{alertname="GoipdSimDead"}',
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": "GoipdSimDead"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts) or [alert(summary="SIM of line hq/G101 not registered")],
    }
    return body | extra
