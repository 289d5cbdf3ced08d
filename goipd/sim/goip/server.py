"""SimServer, one simulated SMS Server: built from a spec, changed from the control side (lines,
faults, push URLs, profile settings), and the vendor API as the vendor document shows it."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any, Final

import structlog

from goipd.sim.common import (
    Fault,
    Keep,
    SimError,
    fault_mode,
    opt_url,
    seconds,
)
from goipd.sim.goip.devices import SimDevice
from goipd.sim.goip.inbox import ReceiveRow
from goipd.sim.goip.lines import SimLine, SubTask, line_value
from goipd.sim.goip.relay import RELAY_KEYS, RelayServer, relay_value
from goipd.sim.goip.state import (
    FAULT_MODES,
    PROFILE_KEYS,
    PROFILE_V1284,
    UNSET,
    SimConflict,
    profile_value,
)

log = structlog.get_logger("goipd.sim")

MAX_NUMBERS: Final = 9999
SERVER_SPEC_KEYS: Final = frozenset(
    {
        "name",
        "username",
        "password",
        "lines",
        "status_push_url",
        "inbound_push_url",
        "send_delay",
        "receipt_delay",
        "quirks",
        "drop_reports",
        "fault",
        "profile",
        "mbstring",
        "engine",
        "engine_delay",
        "keepalive_after",
        "session_time",
        "inbox_ties",
        "inbox_layout",
        "devices",
        *RELAY_KEYS,
    }
)


class SimServer(RelayServer):
    """One simulated SMS Server, as the fleet, the HTTP handlers and the tests use it."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SimServer:
        if not isinstance(spec, Mapping):
            raise SimError("a server spec must be an object")
        unknown = set(spec) - SERVER_SPEC_KEYS
        if unknown:
            raise SimError(f"unknown server fields: {', '.join(sorted(unknown))}")
        for key in ("name", "password"):
            if not isinstance(spec.get(key), str):
                raise SimError(f"a server needs a string {key}")
        lines = [SimLine.from_spec(item) for item in spec.get("lines") or []]
        by_id = {line.line_id: line for line in lines}
        if len(by_id) != len(lines):
            raise SimError("duplicate line_id")
        fault = spec.get("fault") or {}
        if not isinstance(fault, Mapping):
            raise SimError("fault must be an object")
        devices = _devices(spec.get("devices") or [], by_id)
        relay: dict[str, Any] = {
            key: relay_value(key, spec[key]) for key in RELAY_KEYS if key in spec
        }
        return cls(
            name=spec["name"],
            username=str(spec.get("username", "root")),
            password=spec["password"],
            lines=by_id,
            status_push_url=opt_url(spec.get("status_push_url"), "status_push_url"),
            inbound_push_url=opt_url(spec.get("inbound_push_url"), "inbound_push_url"),
            send_delay=seconds(spec.get("send_delay", 0.05), "send_delay"),
            receipt_delay=seconds(spec.get("receipt_delay", 0.05), "receipt_delay"),
            quirks=bool(spec.get("quirks", True)),
            drop_reports=bool(spec.get("drop_reports", False)),
            fault=Fault(
                str(fault.get("mode", "none")), seconds(fault.get("delay", 30.0), "fault.delay")
            ),
            **{key: profile_value(key, spec[key]) for key in PROFILE_KEYS if key in spec},
            devices=devices,
            **relay,
        )

    # --- state changes (mirrors the control API) -------------------------------------------

    def line(self, line_id: str) -> SimLine:
        try:
            return self.lines[line_id]
        except KeyError:
            raise LookupError(f"server {self.name} has no line {line_id}") from None

    def set_line(self, line_id: str, **changes: Any) -> SimLine:
        line = self.line(line_id)
        if "line_id" in changes:
            raise SimError("line_id cannot change; delete and add the line instead")
        checked = {key: line_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(line, key, value)
        log.info("sim_line_changed", server=self.name, line=line_id, **checked)
        self._kick_engine()
        return line

    def add_line(self, line: SimLine | Mapping[str, Any]) -> SimLine:
        new = line if isinstance(line, SimLine) else SimLine.from_spec(line)
        if new.line_id in self.lines:
            raise SimConflict(f"line {new.line_id} exists")
        self.lines[new.line_id] = new
        self._queue.append(new.line_id)
        self._baseline[new.line_id] = replace(new)
        self._kick_engine()
        return new

    def remove_line(self, line_id: str) -> SimLine:
        line = self.line(line_id)
        del self.lines[line_id]
        self._queue.remove(line_id)
        self._baseline.pop(line_id, None)
        # Its `goip` row is gone: inbox rows keep its old id, which no longer joins.
        self._row_ids.pop(f"goip:{line_id}", None)
        return line

    def set_fault(self, mode: str, delay: float | None = None) -> Fault:
        self.fault = Fault(
            fault_mode(mode, FAULT_MODES),
            self.fault.delay if delay is None else seconds(delay, "delay"),
        )
        log.info("sim_fault_set", server=self.name, mode=mode, delay=self.fault.delay)
        return self.fault

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Changes any of the PROFILE_KEYS settings (the engine's, PHP's, the web inbox's).

        Engine `dead` freezes what querylines shows and stops all sending; leaving `dead` is an
        engine restart: every line reads offline for `keepalive_after`, then whatever is still
        queued (and less than a day old) goes out.
        """
        unknown = set(changes) - PROFILE_KEYS
        if unknown:
            raise SimError(f"unknown server fields: {', '.join(sorted(unknown))}")
        checked = {key: profile_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            if key == "engine":
                self._set_engine(value)
            else:
                setattr(self, key, value)
        log.info("sim_server_configured", server=self.name, **checked)
        self._kick_engine()
        return self.profile_state()

    def profile_state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in sorted(PROFILE_KEYS)}

    def set_push(
        self,
        status_url: str | Keep | None = UNSET,
        inbound_url: str | Keep | None = UNSET,
        drop_reports: bool | None = None,
    ) -> dict[str, Any]:
        if status_url is not UNSET:
            self.status_push_url = opt_url(status_url, "status_url")
        if inbound_url is not UNSET:
            self.inbound_push_url = opt_url(inbound_url, "inbound_url")
        if drop_reports is not None:
            self.drop_reports = drop_reports
        return self.push_state()

    def push_state(self) -> dict[str, Any]:
        return {
            "status_url": self.status_push_url,
            "inbound_url": self.inbound_push_url,
            "drop_reports": self.drop_reports,
        }

    def restore_line(self, line_id: str) -> SimLine:
        """Back to the state the line was created with (what churn's "restore" does)."""
        line = self.line(line_id)
        base = self._baseline.get(line_id)
        if base is not None:
            line.online, line.reg = base.online, base.reg
            line.remain_sms, line.day_remain_sms = base.remain_sms, base.day_remain_sms
        self._kick_engine()
        return line

    async def push_inbound(
        self,
        goip_line: str,
        from_number: str,
        content: str,
        recv_time: str | None = None,
        push_after: float = 0.0,
    ) -> dict[str, Any]:
        """A line "receives" an SMS: a `receive` row, then its push to inbound_push_url, now
        or (`push_after` > 0) that many seconds later in the background.

        `goip_line` may name a line the server does not have (one renamed or deleted since):
        the row keeps the name with goipid 0, and the push carries a null goip_line.
        """
        line = self.lines.get(goip_line)
        goipid = self._row_id("goip", goip_line) if line is not None else 0
        row = self.inbox.store(from_number, content, recv_time, goipid, goip_line)
        self.counters["inbound"] += 1
        if push_after > 0:
            self._require_fleet().spawn(self._push_received(row, push_after))
            return {"push": "scheduled", "report": self._inbound_body(row), "id": row.id}
        outcome, body = await self._push_received(row)
        return {"push": outcome, "report": body, "id": row.id}

    async def _push_received(
        self, row: ReceiveRow, after: float = 0.0
    ) -> tuple[str, dict[str, Any]]:
        if after > 0:
            await asyncio.sleep(after)
        body = self._inbound_body(row)  # send_json.php reads the row when it runs
        outcome = await self._require_fleet().push(
            self, self.inbound_push_url, body, "inbound", php=self.profile == PROFILE_V1284
        )
        return outcome, body

    # --- the vendor API, minus HTTP --------------------------------------------------------

    def check_auth(self, body: Any) -> bool:
        auth = body.get("auth") if isinstance(body, dict) else None
        return (
            isinstance(auth, dict)
            and auth.get("username") == self.username
            and auth.get("password") == self.password
        )

    def query_lines(self) -> list[dict[str, str]]:
        return [line.querylines_entry() for line in self.lines.values()]

    def query_sms(self, task_id: Any) -> list[dict[str, str]]:
        task, _, number = str(task_id).strip().partition(".")
        return [
            sub.report() for sub in self.tasks.get(task, ()) if not number or sub.number == number
        ]

    def send_sms(
        self,
        number: Any,
        content: Any,
        provider: Any = None,
        goip_line: Any = None,
    ) -> dict[str, str]:
        """The sendsms decision: accept (and queue every recipient on a line) or reject.

        Needs a running event loop once accepted: the sends happen in the background.
        """
        numbers = _numbers(number)
        if not numbers or len(numbers) > MAX_NUMBERS or not isinstance(content, str) or not content:
            return self._reject("unknown")
        line_id = str(goip_line) if goip_line not in (None, "") else None
        group = str(provider) if provider not in (None, "") else None
        if line_id is not None:
            # The doc: goip_line wins and provider is ignored.
            line = self.lines.get(line_id)
            if line is None or not self._can_take(line):
                return self._reject("none_line")
            group = None
        elif group is not None and not any(line.provider == group for line in self.lines.values()):
            return self._reject("none_provider")
        elif not any(
            self._can_take(line) and (group is None or line.provider == group)
            for line in self.lines.values()
        ):
            return self._reject("none_line")
        fleet = self._require_fleet()
        self.next_task_id += 1
        task_id = str(self.next_task_id)
        subtasks = []
        for recipient in numbers:
            chosen = self._pick(line_id, group)
            sub = SubTask(task_id, recipient, content, chosen)
            subtasks.append(sub)
            if chosen is None:
                fleet.spawn(self._fail_unassigned(sub))
            else:
                self._pending[chosen] += sub.parts
                self._outbox.setdefault(chosen, deque()).append(sub)
        self.tasks[task_id] = subtasks
        for chosen in {sub.goip_line for sub in subtasks if sub.goip_line is not None}:
            worker = self._workers.get(chosen)
            if worker is None or worker.done():
                self._workers[chosen] = fleet.spawn(self._line_worker(chosen))
        self.counters["tasks_accepted"] += 1
        self.counters["recipients_accepted"] += len(subtasks)
        log.debug("sim_task_accepted", server=self.name, task=task_id, recipients=len(subtasks))
        return {"result": "ACCEPT", "taskID": task_id}

    def _reject(self, reason: str) -> dict[str, str]:
        self.counters[f"rejected_{reason}"] += 1
        return {"result": "REJECT", "reason": reason}

    def _can_take(self, line: SimLine) -> bool:
        if not line.usable:
            return False
        pending = self._pending[line.line_id]
        return all(quota < 0 or quota > pending for quota in (line.remain_sms, line.day_remain_sms))

    def _pick(self, line_id: str | None, group: str | None) -> str | None:
        candidates = [line_id] if line_id is not None else self._queue
        for candidate in candidates:
            line = self.lines[candidate]
            if self._can_take(line) and (group is None or line.provider == group):
                self._queue.remove(candidate)
                self._queue.append(candidate)
                return candidate
        return None

    def encode(self, payload: Any) -> tuple[str, str]:
        """Reply text and content type, with or without the vendor's quirks."""
        if not self.quirks:
            return json.dumps(payload, ensure_ascii=False), "application/json"
        if isinstance(payload, list):
            # As the doc's examples (and, reportedly, real servers) write arrays: "},\n]".
            items = "".join(f"{json.dumps(item, ensure_ascii=False)},\n" for item in payload)
            return f"[\n{items}]", "text/html"
        return json.dumps(payload, ensure_ascii=False), "text/html"

    # --- what the control API shows ----------------------------------------------------------

    def stored_tasks(self) -> list[dict[str, Any]]:
        """Every recipient row ever stored (v1.28.4 `sends` rows and document sub-tasks)."""
        return [
            {
                "task_id": sub.task_id,
                "sub_task_id": sub.sub_task_id,
                "number": sub.number,
                "content": sub.content,
                "state": sub.send,
                "goip_line": sub.goip_line,
                "parts": sub.parts,
            }
            for subs in self.tasks.values()
            for sub in subs
        ]

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "username": self.username,
            "lines": [line.state() for line in self.lines.values()],
            "fault": asdict(self.fault),
            "status_push_url": self.status_push_url,
            "inbound_push_url": self.inbound_push_url,
            "drop_reports": self.drop_reports,
            "quirks": self.quirks,
            "send_delay": self.send_delay,
            "receipt_delay": self.receipt_delay,
            "next_task_id": self.next_task_id,
            "tasks": len(self.tasks),
            "sent": len(self.sent),
            "queued": sum(self._pending.values()),
            "unsent": len(self._unsent),
            "counters": dict(self.counters),
            **self.profile_state(),
            "relay": self.relay_state(),
            "devices": sorted(self.devices),
        }


def _numbers(number: Any) -> list[str]:
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    if not isinstance(number, str):
        return []
    # The doc: repeats within one request are merged into one recipient.
    return list(dict.fromkeys(n.strip() for n in number.split(",") if n.strip()))


def _devices(specs: Any, lines: Mapping[str, SimLine]) -> dict[str, SimDevice]:
    """The server's devices: each names lines the server has, no line on two devices."""
    if not isinstance(specs, list):
        raise SimError("devices must be a list")
    devices: dict[str, SimDevice] = {}
    placed: set[str] = set()
    for item in specs:
        device = SimDevice.from_spec(item)
        if device.name in devices:
            raise SimError(f"duplicate device {device.name}")
        for line_id in device.lines:
            if line_id not in lines:
                raise SimError(f"device {device.name}: the server has no line {line_id}")
            if line_id in placed:
                raise SimError(f"line {line_id} is on two devices")
            placed.add(line_id)
        devices[device.name] = device
    return devices
