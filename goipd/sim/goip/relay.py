"""What a simulated SMS Server relays to its lines' GoIPs through its engine: USSD
(`en/ussd.php`) and remote commands (`api.php`: a module or a whole device rebooted), as
v1.28.4's PHP does it. Both profiles have them.

Modelled as the PHP does it:
- both pages check `USERNAME` and `PASSWORD` from the query or form (a web login's session
  cookie skips the check), comparing the password backslash-escaped (`addslashes`), so one
  holding `'`, `"` or `\\` never logs in; a refusal is the login page with status 200. The line
  name goes into SQL unquoted (`Bad query` for a lone `'`); names compare case-insensitively.
- ussd.php: `ERROR Not find this TERM` for an unknown line (and then the wait all the same),
  `ERROR goipcron no response` after `engine_delay` when the engine is dead, `ERROR term no
  response` after `ussd_timeout` from a line that does not answer, else after `ussd_delay` the
  line's scripted answer: `OK <answer>` with `@` removed and MySQL's escaping applied
  (a line break as `\\n`, `'` as `\\'`), or `ERROR USSD send failed!`. The relay id is the
  second the request came in: sessions that share one and overlap all get the answer of the
  one that started last, so the first caller gets another line's answer.
- api.php: `ERROR:not set goipid or goipname.` before the login, `ERROR:Not find this goip
  line.`, `ERROR:Cannot get response from process named "goipcron"` when the engine is dead,
  `ERROR:time outOK` after `command_timeout` when the line cannot be reached (offline,
  rebooting, not answering; the page prints `OK` after its own time out), else `OK`:
  `svr_reboot_module` takes the line offline for `reboot_time`, `svr_reboot_dev` every line of
  the line's device (and its web page), then each comes back as its `reboot_result` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from goipd.sim.common import SimError, seconds
from goipd.sim.goip.devices import SimDevice, port_state
from goipd.sim.goip.inbox_pages import login_form
from goipd.sim.goip.lines import SimLine
from goipd.sim.goip.php import PhpServer
from goipd.sim.goip_sql import BadQuery, mysql_ci_key, mysql_number, php_empty, run_statement

log = structlog.get_logger("goipd.sim")

RELAY_KEYS: Final = frozenset({"ussd_delay", "ussd_timeout", "command_timeout", "reboot_time"})
"""Server settings of the relayed pages (in a spec, in PATCH /_control/servers/{s}/relay)."""
SQL_USSD_LINE: Final = (
    "SELECT prov.*,goip.*,goip.id as goipid FROM goip,prov "
    "where prov.id=goip.provider and goip.name='{}'"
)
SQL_API_LINE: Final = (
    "SELECT prov.*,goip.*,goip.id as id FROM goip,prov where prov.id=goip.provider and "
    "goip.name='{}'"
)
USSD_UNKNOWN_LINE: Final = "ERROR Not find this TERM"
USSD_NO_ENGINE: Final = "ERROR goipcron no response"
USSD_NO_RESPONSE: Final = "ERROR term no response"
USSD_FAILED: Final = "ERROR USSD send failed!"
USSD_RECHARGE: Final = "cannt find recharge card"
API_NO_LINE_GIVEN: Final = "ERROR:not set goipid or goipname."
API_UNKNOWN_LINE: Final = "ERROR:Not find this goip line."
API_NO_ENGINE: Final = 'ERROR:Cannot get response from process named "goipcron"'
API_TIME_OUT: Final = "ERROR:time outOK"
_MYSQL_ESCAPES: Final = {
    "\\": "\\\\",
    "\0": "\\0",
    "\n": "\\n",
    "\r": "\\r",
    "'": "\\'",
    '"': '\\"',
    "\x1a": "\\Z",
}


def relay_value(key: str, value: Any) -> float:
    if key not in RELAY_KEYS:
        raise SimError(f"unknown relay field {key!r}")
    return seconds(value, key)


def mysql_escape(text: str) -> str:
    """mysql_real_escape_string, which ussd.php applies to the answer before printing it."""
    return "".join(_MYSQL_ESCAPES.get(char, char) for char in text)


def _addslashes(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\0", "\\0")


def _recharge(code: str) -> bool:
    """ussd.php reads `<prefix>$<suffix>` (or `?`) as a recharge-card template."""
    for mark in ("$", "?"):
        parts = code.split(mark)
        if len(parts) > 1 and not php_empty(parts[1]):
            return True
    return False


@dataclass
class RelaySlot:
    """One relay id at the engine and the USSD sessions waiting on it."""

    latest: asyncio.Future[str]
    """The reply of the session that started last: the one every session here receives."""
    sessions: int = 0


class RelayServer(PhpServer):
    """A server's ussd.php and api.php, its lines' reboots and its devices."""

    relay_clock: Callable[[], float] = time.time
    """Where the relay id (PHP's time()) comes from; tests may replace it."""

    # --- settings and what the control API shows -----------------------------------------------

    def relay_state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in sorted(RELAY_KEYS)}

    def configure_relay(self, **changes: Any) -> dict[str, Any]:
        checked = {key: relay_value(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(self, key, value)
        log.info("sim_relay_configured", server=self.name, **checked)
        return self.relay_state()

    def is_rebooting(self, line_id: str) -> bool:
        task = self._reboots.get(line_id)
        return task is not None and not task.done()

    def device_of(self, line_id: str) -> SimDevice | None:
        return next((d for d in self.devices.values() if line_id in d.lines), None)

    def device_state(self, device: SimDevice) -> dict[str, Any]:
        ports = [
            port_state(port, self.lines.get(line_id), self.is_rebooting(line_id))
            for port, line_id in enumerate(device.lines, 1)
        ]
        return {**device.settings(), "server": self.name, "ports": ports}

    # --- the pages ------------------------------------------------------------------------------

    def _relay_login(self, params: Mapping[str, str], cookie: str | None) -> bool:
        """The `user` lookup both pages make, unless a web login's session is sent along."""
        if self.inbox.logged_in(cookie):
            return True
        username = params.get("USERNAME", "")
        password = params.get("PASSWORD", "")
        # MySQL reads the escaped name back as it was; md5() is taken of the escaped password.
        known = bool(username) and mysql_ci_key(username) == mysql_ci_key(self.username)
        return known and _addslashes(password) == self.password

    def _relay_line(self, name: str) -> SimLine | None:
        key = mysql_ci_key(name)
        return next((ln for ln in self.lines.values() if mysql_ci_key(ln.line_id) == key), None)

    def _reachable(self, line: SimLine) -> bool:
        """The engine reaches the line's GoIP: it is logged in, not rebooting, answering."""
        device = self.device_of(line.line_id)
        device_ok = device is None or (device.responds and device.down_until <= time.monotonic())
        return line.responds and line.online and not self.is_rebooting(line.line_id) and device_ok

    async def ussd_request(
        self, params: Mapping[str, str], *, cookie: str | None = None, refuse: bool = False
    ) -> str:
        """en/ussd.php without `debug`: the whole reply text (status 200)."""
        self.counters["requests_ussd"] += 1
        if refuse or not self._relay_login(params, cookie):
            return login_form()
        try:
            (name,) = run_statement(SQL_USSD_LINE, [params.get("TERMID", "")])
        except BadQuery as exc:
            return exc.reply
        line = self._relay_line(name)
        out = "" if line is not None else USSD_UNKNOWN_LINE
        code = params.get("USSDMSG")
        if code is None:
            return out
        if _recharge(code):
            return out + USSD_RECHARGE
        if self.engine == "dead":
            await asyncio.sleep(self.engine_delay)
            return out + USSD_NO_ENGINE
        recvid = int(self.relay_clock())
        entry: dict[str, Any] = {
            "line": line.line_id if line is not None else name,
            "code": code,
            "at": time.time(),
            "relay_id": recvid,
            "collided": False,
        }
        self.ussd_log.append(entry)
        reply = await self._relay_ussd(recvid, line, code, entry)
        entry["reply"] = reply
        return out + reply

    async def _relay_ussd(
        self, recvid: int, line: SimLine | None, code: str, entry: dict[str, Any]
    ) -> str:
        mine: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        slot = self._relay_slots.get(recvid)
        if slot is None:
            slot = self._relay_slots[recvid] = RelaySlot(mine)
        else:
            self.counters["ussd_relay_collisions"] += 1
            entry["collided"] = True
            log.info("sim_ussd_relay_collision", server=self.name, relay_id=recvid)
            slot.latest = mine
        slot.sessions += 1
        try:
            own = await self._device_ussd(line, code)
            mine.set_result(own)
            if slot.latest is not mine:
                # The engine sends the relay id's answer to the session that registered it last.
                return await asyncio.shield(slot.latest)
            return own
        finally:
            if not mine.done():
                mine.set_result(USSD_NO_RESPONSE)
            slot.sessions -= 1
            if slot.sessions == 0 and self._relay_slots.get(recvid) is slot:
                del self._relay_slots[recvid]

    async def _device_ussd(self, line: SimLine | None, code: str) -> str:
        if line is None or not self._reachable(line):
            await asyncio.sleep(self.ussd_timeout)
            return USSD_NO_RESPONSE
        await asyncio.sleep(self.ussd_delay)
        if line.ussd_error is not None:
            return f"ERROR {line.ussd_error}"
        answer = line.ussd.get(code)
        registered = line.module_up and line.sim_present and line.reg == "LOGIN"
        if answer is None or not registered:
            return USSD_FAILED
        return "OK " + mysql_escape(answer.replace("@", ""))

    async def command_request(
        self, params: Mapping[str, str], *, cookie: str | None = None, refuse: bool = False
    ) -> str:
        """api.php: the whole reply text (status 200)."""
        self.counters["requests_api"] += 1
        goipid, goipname = params.get("goipid", ""), params.get("goipname", "")
        if php_empty(goipid) and php_empty(goipname):
            return API_NO_LINE_GIVEN
        if refuse or not self._relay_login(params, cookie):
            return login_form()
        if not php_empty(goipid):
            number = mysql_number(goipid)
            line = next(
                (ln for ln in self.lines.values() if self._row_id("goip", ln.line_id) == number),
                None,
            )
        else:
            try:
                (name,) = run_statement(SQL_API_LINE, [goipname])
            except BadQuery as exc:
                return exc.reply
            line = self._relay_line(name)
        if line is None:
            return API_UNKNOWN_LINE
        if self.engine == "dead":
            await asyncio.sleep(self.engine_delay)
            return API_NO_ENGINE
        cmd = params.get("cmd", "")
        recvid = int(self.relay_clock()) + self._row_id("goip", line.line_id) * 10000
        entry: dict[str, Any] = {
            "cmd": cmd,
            "line": line.line_id,
            "at": time.time(),
            "relay_id": recvid,
        }
        self.command_log.append(entry)
        self.counters[f"command_{cmd}"] += 1
        reply = await self._device_command(line, cmd, recvid)
        entry["reply"] = reply
        log.info("sim_command_answered", server=self.name, line=line.line_id, cmd=cmd, reply=reply)
        return reply

    async def _device_command(self, line: SimLine, cmd: str, recvid: int) -> str:
        if not self._reachable(line):
            await asyncio.sleep(self.command_timeout)
            return API_TIME_OUT
        if cmd == "svr_reboot_module":
            self.reboot([line.line_id])
        elif cmd == "svr_reboot_dev":
            device = self.device_of(line.line_id)
            self.reboot(device.lines if device is not None else [line.line_id], device)
        else:
            return f"ERROR:ERROR {recvid} unknown command"
        return "OK"

    # --- reboots --------------------------------------------------------------------------------

    def reboot(self, line_ids: list[str], device: SimDevice | None = None) -> None:
        """The lines go offline now and come back after `reboot_time`, as each one's
        `reboot_result` says; a device's web page answers nothing meanwhile."""
        fleet = self._require_fleet()
        for line_id in line_ids:
            line = self.lines.get(line_id)
            if line is None:
                continue
            running = self._reboots.get(line_id)
            if running is not None and not running.done():
                running.cancel()
            line.online, line.reg = False, ""
            self._reboots[line_id] = fleet.spawn(self._come_back(line_id))
            self.counters["reboots"] += 1
            log.info("sim_line_rebooting", server=self.name, line=line_id, seconds=self.reboot_time)
        if device is not None:
            device.down_until = time.monotonic() + self.reboot_time
        self._kick_engine()

    async def _come_back(self, line_id: str) -> None:
        await asyncio.sleep(self.reboot_time)
        line = self.lines.get(line_id)
        if line is None:
            return
        if line.reboot_result == "registered":
            line.online, line.reg = True, "LOGIN"
        elif line.reboot_result == "unregistered":
            line.online, line.reg = True, "LOGOUT"
        log.info("sim_line_rebooted", server=self.name, line=line_id, result=line.reboot_result)
        self._kick_engine()
