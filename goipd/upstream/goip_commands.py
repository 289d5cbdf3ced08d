"""Remote commands through the GoIP SMS Server's `api.php`: reboot a line's module, reboot the
device a line is on. The pure reply parser and an async client.

What the page does (v1.28.4) and what follows here:
- `GET api.php?USERNAME=&PASSWORD=&goipname=<line>&cmd=<command>` asks the engine to relay
  the command to the line's GoIP and waits for its answer: `OK`, `ERROR:<why>`, or small JSON
  for the commands that report a setting. An unknown line is `ERROR:Not find this goip line.`;
  a stopped engine `ERROR:Cannot get response from process named "goipcron"` after 15 s; a
  device that does not answer `ERROR:time out` after 6 x 5 s, with `OK` printed right after it
  (the page judges the command it sent instead of an answer): `ERROR:time outOK`, a timeout.
  Bad credentials get the HTML login page, status 200.
- The relay id is `time() + the line's row id x 10000`: two commands on one line in the same
  second share it and get each other's answers. So the client sends one command per line at a
  time, `spacing` apart; after one whose answer it did not wait for, not before the page must
  have given up (the page keeps running when the client goes away).
- A command that timed out, or whose connection was lost, may still have been carried out: a
  reboot after `timeout` or `no_response` is not known not to have happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
import structlog
from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, ParseError
from goipd.upstream.goip import DatabaseFault
from goipd.upstream.goip_ussd import (
    DEFAULT_SPACING,
    RelayError,
    Turns,
    check_line,
    check_login_page,
    fetch_page,
    line_param,
    relay_session,
    reply_errors,
    reply_text,
    server_message,
)

log = structlog.get_logger("goipd.upstream.goip_commands")

Command = Literal["svr_reboot_module", "svr_reboot_dev"]
COMMANDS: Final[tuple[Command, ...]] = ("svr_reboot_module", "svr_reboot_dev")
DEFAULT_COMMAND_TIMEOUT: Final = 60.0
"""api.php waits up to 15 s for the engine, then 6 x 5 s for the device."""
SERVER_COMMAND_LIMIT: Final = 50.0
"""How long api.php can keep a command open after it started, whatever the client does."""
MAX_JSON_FIELDS: Final = 32


@dataclass(frozen=True, slots=True)
class CommandReply:
    text: str
    """`OK`, or the JSON as the server wrote it."""
    values: Mapping[str, str] = field(default_factory=dict)
    """A JSON reply's fields (values as text); empty for `OK`."""


# --- pure parser --------------------------------------------------------------------------------


def _command_error(message: str) -> RelayError:
    if "Not find this goip line" in message or "not set goipid or goipname" in message:
        return RelayError(ErrorReason.UNKNOWN_LINE, "the SMS Server has no such line")
    if any(part in message for part in ("goipcron", "sendto error", "socket_create")):
        return RelayError(
            ErrorReason.ENGINE_DOWN,
            f"the SMS Server's engine did not take the command ({server_message(message)})",
        )
    if message.removesuffix("OK").strip() == "time out":
        return RelayError(ErrorReason.NO_RESPONSE, "the line's GoIP never answered (time out)")
    # A device's own refusal comes as `ERROR:ERROR <relay id> <why>`: the id says nothing.
    words = message.split(" ", 2)
    if len(words) == 3 and words[0] == "ERROR" and words[1].isdigit():
        message = words[2]
    return RelayError(ErrorReason.DEVICE_ERROR, server_message(message) or "ERROR")


def parse_command_reply(body: bytes | str) -> CommandReply:
    """An api.php reply. Raises LoginPage, DatabaseFault, RelayError for `ERROR:...` (and for
    JSON holding an `ERROR:` value), ParseError for anything else."""
    text = reply_text(body).rstrip()
    if text == "OK":
        return CommandReply("OK")
    if text.startswith("ERROR"):
        raise _command_error(text[5:].removeprefix(":").strip())
    if text.startswith("{"):
        return _json_reply(text)
    check_login_page(text)
    if not text:
        raise ParseError("api.php: empty reply")
    raise ParseError("api.php: the reply is neither OK, ERROR:... nor JSON")


def _json_reply(text: str) -> CommandReply:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ParseError("api.php: a reply starting with { that is not JSON") from None
    if not isinstance(data, dict) or len(data) > MAX_JSON_FIELDS:
        raise ParseError("api.php: expected a small JSON object")
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict | list) or value is None:
            raise ParseError(f"api.php: field {server_message(key)!r} is not a plain value")
        values[key] = str(value)
        if values[key].startswith("ERROR"):
            raise RelayError(ErrorReason.DEVICE_ERROR, server_message(values[key]))
    return CommandReply(text, values)


# --- client -------------------------------------------------------------------------------------


class CommandClient:
    """Remote commands through one SMS Server: one command per line at a time, `spacing`
    seconds apart; commands on different lines run side by side. One client per SMS Server.
    The time a command waits for its turn is not part of its timeout."""

    def __init__(
        self,
        name: str,
        base_url: str,
        username: str,
        password: SecretStr,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        spacing: float = DEFAULT_SPACING,
        session_limit: float = SERVER_COMMAND_LIMIT,
        escape_line: bool = True,
        clock: Callable[[], float] = time.monotonic,
        succeeds: CommandClient | None = None,
    ) -> None:
        """`succeeds`: the client of the same server this one replaces (a reload): commands
        it still has open keep their lines' turns with this one's."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.spacing = spacing
        self.session_limit = max(session_limit, spacing)
        self.escape_line = escape_line
        self._username = username
        self._password = password
        self._clock = clock
        self._turns: dict[str, Turns] = succeeds._turns if succeeds is not None else {}
        self._session: aiohttp.ClientSession | None = None

    def busy(self, line: str) -> bool:
        """A command on `line` is under way or waiting for its turn."""
        turns = self._turns.get(line.casefold())
        return turns is not None and turns.busy

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def reboot_module(self, line: str) -> CommandReply:
        """Restart the GSM module of `line` (the line goes offline until it registers again)."""
        return await self.run(line, "svr_reboot_module")

    async def reboot_device(self, line: str) -> CommandReply:
        """Restart the whole GoIP `line` is on: every line of that device goes offline."""
        return await self.run(line, "svr_reboot_dev")

    async def run(self, line: str, cmd: Command) -> CommandReply:
        check_line(line)
        if cmd not in COMMANDS:
            raise ValueError(f"unknown command {cmd!r}")
        what = f"{cmd} {line}"
        params = {
            "USERNAME": self._username,
            "PASSWORD": self._password.get_secret_value(),
            "goipname": line_param(line, self.escape_line),
            "cmd": cmd,
        }
        # Line names are unique on the server regardless of case (MySQL compares them so).
        turns = self._turns.setdefault(
            line.casefold(), Turns(self.spacing, self.session_limit, self._clock)
        )
        async with turns.turn() as turn:
            if self._session is None or self._session.closed:
                self._session = relay_session(self.timeout)
            url = f"{self.base_url}/goip/api.php"
            try:
                body = await fetch_page(self._session, url, params, turn, what, self.timeout)
            finally:
                if not turn.settled:
                    log.warning("command_abandoned", server=self.name, line=line, command=cmd)
        try:
            return parse_command_reply(body)
        except (ParseError, DatabaseFault) as exc:
            raise reply_errors(what, "api.php", exc) from None
