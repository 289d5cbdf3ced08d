"""/api/v1/lines and /api/v1/status: the fleet as the poller sees it, and manual quarantines."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from goipd.fleet.actions import ActionRefused, ActionResult, LineActions
from goipd.fleet.balances import BalanceChecker, LeaseHeld
from goipd.fleet.devices import DeviceLine
from goipd.fleet.quarantine import QUARANTINE_KEY
from goipd.fleet.registry import Line, LineRegistry, LineState, ManualQuarantine, ServerState
from goipd.ledger.upkeep import LineBalance, Remediation
from goipd.model import LedgerError
from goipd.problem import Problem
from goipd.upstream import cms
from goipd.upstream.goip import SETUP_FIXES
from goipd.upstream.goip_device import WEAK_SIGNAL_DBM
from goipd.web import overview
from goipd.web.auth import client_id
from goipd.web.body import json_body
from goipd.web.context import API_KEY, REGISTRY_KEY
from goipd.web.line_requests import (
    BalanceRequest,
    LineRequest,
    QuarantineRequest,
    RebootRequest,
    UssdRequest,
    parse_line_request,
)
from goipd.web.replies import json_reply


def line_json(line: Line, now: float, registry: LineRegistry | None = None) -> dict[str, Any]:
    key = (line.server, line.line_id)
    balance = registry.balances.get(key) if registry is not None else None
    remediation = registry.remediations.get(key) if registry is not None else None
    device = registry.devices.get(key) if registry is not None else None
    return {
        "server": line.server,
        "line": line.line_id,
        "state": line.state.value,
        "online": line.online,
        "registered": line.registered,
        "reg": line.reg_raw,
        "remain_sms": line.remain_sms,
        "day_remain_sms": line.day_remain_sms,
        "healthy": line.healthy,
        "quarantined": line.quarantined(now),
        "quarantined_until": line.quarantined_until if line.auto_quarantined(now) else None,
        "quarantine_reason": line.quarantine_reason if line.auto_quarantined(now) else None,
        "manual_quarantine": manual_json(line.manual_quarantine),
        "last_error": (
            {
                "code": line.last_error_code,
                "meaning": cms.meaning(line.last_error_code),
                "at": line.last_error_at,
            }
            if line.last_error_at is not None
            else None
        ),
        "first_seen": line.first_seen,
        "last_change": line.last_change,
        "last_seen": line.last_seen,
        "balance": balance_json(balance, registry, key) if balance is not None else None,
        "remediation": remediation_json(remediation) if remediation is not None else None,
        "device": device_json(device, now) if device is not None else None,
    }


def balance_json(
    balance: LineBalance, registry: LineRegistry | None, key: tuple[str, str]
) -> dict[str, Any]:
    low = registry.balance_thresholds.get(key) if registry is not None else None
    failing = balance.error_at is not None and (
        balance.read_at is None or balance.error_at > balance.read_at
    )
    return {
        "value": balance.balance,
        "read_at": balance.read_at,
        "answer": balance.answer,
        "low": low,
        "is_low": low is not None and balance.balance is not None and balance.balance < low,
        "error": (
            {"reason": balance.error_reason, "detail": balance.error, "at": balance.error_at}
            if failing
            else None
        ),
    }


def device_json(device: DeviceLine, now: float) -> dict[str, Any]:
    poll = device.poll
    return {
        "device": device.device,
        "port": device.port,
        "signal_dbm": device.signal_dbm,
        "weak_signal": device.signal_dbm is not None and device.signal_dbm <= WEAK_SIGNAL_DBM,
        "csq": device.csq,
        "operator": device.operator,
        "sim_present": device.sim_present,
        "module_on": device.module_on,
        "gsm_registered": device.gsm_registered,
        "seen_at": device.seen_at,
        "stale": device.seen_at is not None and not device.fresh(now),
        "error": (
            {"reason": poll.reason, "detail": poll.detail, "at": poll.at, "last_ok": poll.ok_at}
            if poll.reason is not None
            else None
        ),
    }


def remediation_json(remediation: Remediation) -> dict[str, Any]:
    return {
        "incident": remediation.incident,
        "incident_since": remediation.incident_since,
        "action": remediation.action,
        "started_at": remediation.started_at,
        "result": remediation.result,
        "finished_at": remediation.finished_at,
        "detail": remediation.detail,
    }


def manual_json(quarantine: ManualQuarantine | None) -> dict[str, Any] | None:
    if quarantine is None:
        return None
    return {"reason": quarantine.reason, "since": quarantine.since}


def server_json(server: ServerState) -> dict[str, Any]:
    return {
        "server": server.name,
        "up": server.up,
        "polled": server.polled,
        "last_poll": server.last_poll,
        "last_success": server.last_success,
        "last_error": server.last_error,
        "last_error_reason": server.last_error_reason.value if server.last_error_reason else None,
        "consecutive_failures": server.consecutive_failures,
        "stalled": server.stalled_since is not None,
        "stalled_since": server.stalled_since,
        "stall_detail": server.stall_detail,
        "lines": sum(1 for line in server.lines.values() if not line.gone),
        "setup_problems": [
            {"problem": key, "warning": warning, "fix": SETUP_FIXES[key]}
            for key, warning in server.setup_problems.items()
        ],
    }


async def get_lines(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    server_filter = request.query.get("server")
    state_filter = request.query.get("state")
    healthy_filter = request.query.get("healthy")
    if server_filter is not None and server_filter not in registry.servers:
        raise Problem(404, f"no server named {server_filter[:40]!r}")
    if state_filter is not None and state_filter not in set(LineState):
        raise Problem(400, f"state must be one of {', '.join(LineState)}")
    if healthy_filter not in (None, "true", "false"):
        raise Problem(400, "healthy must be true or false")
    now = time.time()
    servers = [
        s for s in registry.servers.values() if server_filter is None or s.name == server_filter
    ]
    lines = [
        line_json(line, now, registry)
        for server in servers
        for line in server.lines.values()
        if (state_filter is None or line.state == state_filter)
        and (healthy_filter is None or line.healthy == (healthy_filter == "true"))
    ]
    return json_reply({"servers": [server_json(s) for s in servers], "lines": lines})


async def get_status(request: web.Request) -> web.Response:
    """The status page's overview: servers with line counts, queue depth, provider balances
    and every stored manual quarantine (also those of lines not reported now)."""
    registry = request.app[REGISTRY_KEY]
    metrics = request.app[API_KEY].metrics
    now = time.time()
    quarantines = [
        {
            "server": server,
            "line": line_id,
            "reported": _reported(registry, server, line_id),
            "reason": quarantine.reason,
            "since": quarantine.since,
        }
        for (server, line_id), quarantine in sorted(registry.manual.items())
    ]
    return json_reply(
        {
            "time": now,
            "servers": [
                {**server_json(s), "counts": overview.server_counts(registry, s.name, now)}
                for s in registry.servers.values()
            ],
            "queue": overview.queue(metrics),
            "providers": overview.providers(metrics),
            "manual_quarantines": quarantines,
        }
    )


# For lines the server does not report now: what a GoIP line id can look like ("G101", "1.01").
_LINE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.:-]{0,31}")


def _quarantine_target(request: web.Request) -> tuple[str, str]:
    registry = request.app[REGISTRY_KEY]
    server, line_id = request.match_info["server"], request.match_info["line"]
    state = registry.servers.get(server)
    if state is None:
        raise Problem(404, f"no server named {server[:40]!r}")
    line = state.lines.get(line_id)
    if line is None and not _LINE_ID.fullmatch(line_id):
        raise Problem(
            404,
            f"server {server} reports no line {line_id[:40]!r}, and that is not a line id "
            "(letters, digits and _.:- , at most 32 characters)",
        )
    return server, line_id


def _reported(registry: LineRegistry, server: str, line_id: str) -> bool:
    """The server lists this line in its latest poll."""
    line = registry.line(server, line_id)
    return line is not None and not line.gone


def _quarantine_json(
    registry: LineRegistry, server: str, line_id: str, now: float
) -> dict[str, Any]:
    line = registry.line(server, line_id)
    manual = registry.manual.get((server, line_id))
    return {
        "server": server,
        "line": line_id,
        "reported": _reported(registry, server, line_id),
        "quarantined": manual is not None or (line is not None and line.quarantined(now)),
        "manual_quarantine": manual_json(manual),
    }


async def put_quarantine(request: web.Request) -> web.Response:
    """Take a line out of routing until an operator releases it. A line the server does not
    report right now may be named too: the quarantine applies as soon as it appears."""
    server, line_id = _quarantine_target(request)
    body = await _body(request, QuarantineRequest)
    now = request.app[API_KEY].clock()
    try:
        await request.app[QUARANTINE_KEY].quarantine(
            server, line_id, body.reason or None, now, client_id(request)
        )
    except LedgerError as exc:
        raise Problem(503, f"the ledger cannot store the quarantine right now: {exc}") from None
    return json_reply(_quarantine_json(request.app[REGISTRY_KEY], server, line_id, now))


async def delete_quarantine(request: web.Request) -> web.Response:
    """Release a line: its manual quarantine and any quarantine after line errors."""
    server, line_id = _quarantine_target(request)
    now = request.app[API_KEY].clock()
    try:
        released = await request.app[QUARANTINE_KEY].release(
            server, line_id, now, client_id(request)
        )
    except LedgerError as exc:
        raise Problem(503, f"the ledger cannot store the release right now: {exc}") from None
    if not released.manual and not released.auto:
        raise Problem(404, f"line {line_id} of server {server} is not quarantined")
    reply = _quarantine_json(request.app[REGISTRY_KEY], server, line_id, now)
    reply["released"] = [
        kind for kind, done in (("manual", released.manual), ("errors", released.auto)) if done
    ]
    return json_reply(reply)


ACTIONS_KEY = web.AppKey("line_actions", LineActions)
BALANCES_KEY = web.AppKey("balances", BalanceChecker)


def _action_json(result: ActionResult) -> dict[str, Any]:
    return {
        "server": result.server,
        "line": result.line,
        "action": result.action,
        "ok": result.ok,
        "detail": result.detail,
        "seconds": round(result.seconds, 3),
    }


async def _body(request: web.Request, model: type[LineRequest]) -> LineRequest:
    """The request's body as `model` declares it; no body at all is an empty object."""
    body: Any = await json_body(request) if await request.read() else {}
    return parse_line_request(body, model)


def _action_target(request: web.Request) -> tuple[str, str]:
    """A line the server reports: actions are relayed to the line's GoIP, which must exist."""
    registry = request.app[REGISTRY_KEY]
    server, line_id = request.match_info["server"], request.match_info["line"]
    if server not in registry.servers:
        raise Problem(404, f"no server named {server[:40]!r}")
    if not _reported(registry, server, line_id):
        raise Problem(404, f"server {server} reports no line {line_id[:40]!r}")
    return server, line_id


async def post_reboot(request: web.Request) -> web.Response:
    """Reboot the line's GSM module, or with {"device": true} the GoIP it is on. 200 with the
    SMS Server's answer, or 502 when the server or device refused or did not answer; 409 while
    another action on the line runs."""
    server, line_id = _action_target(request)
    body = await _body(request, RebootRequest)
    try:
        result = await request.app[ACTIONS_KEY].reboot(
            server, line_id, device=body.device, asked_by=f"api:{client_id(request) or 'open'}"
        )
    except ActionRefused as exc:
        raise Problem(exc.status, exc.detail) from None
    return json_reply(_action_json(result), status=200 if result.ok else 502)


async def post_ussd(request: web.Request) -> web.Response:
    """Send a USSD code on the line and answer with the carrier's reply (this can take up to
    balances.answer_timeout, 130 s by default)."""
    server, line_id = _action_target(request)
    body = await _body(request, UssdRequest)
    try:
        result = await request.app[ACTIONS_KEY].ussd(
            server, line_id, body.code, asked_by=f"api:{client_id(request) or 'open'}"
        )
    except ActionRefused as exc:
        raise Problem(
            exc.status, f"code: {exc.detail}" if exc.status == 422 else exc.detail
        ) from None
    return json_reply(_action_json(result), status=200 if result.ok else 502)


async def post_balance(request: web.Request) -> web.Response:
    """Read the line's balance now, with the balance check that applies to it; answers the
    line's balance as `GET /api/v1/lines` shows it (a failed read: 502, with its error)."""
    server, line_id = _action_target(request)
    await _body(request, BalanceRequest)
    checker = request.app[BALANCES_KEY]
    target = checker.target(server, line_id)
    if target is None:
        raise Problem(404, f"no balance check applies to {server}/{line_id} (balances.checks)")
    client = checker.clients(server)
    if client is None:
        raise Problem(404, f"no server named {server!r}")
    try:
        balance = await checker.read_now(client, target)
    except LeaseHeld as exc:
        raise Problem(409, f"{exc}; try again in a minute") from None
    if balance is None:
        raise Problem(503, "the ledger cannot store the balance right now")
    registry = request.app[REGISTRY_KEY]
    reply = balance_json(balance, registry, (server, line_id))
    return json_reply(reply, status=502 if reply["error"] else 200)
