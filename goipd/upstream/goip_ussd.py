"""USSD through the GoIP SMS Server's `en/ussd.php`: the pure reply parser, the balance reader,
and an async client that never lets two USSD sessions of one server overlap.

What the page does (v1.28.4) and what follows here:
- `GET en/ussd.php?USERNAME=&PASSWORD=&TERMID=<line>&USSDMSG=<code>` asks the engine to relay
  the code to the line's GoIP and blocks until the answer: `OK <answer>` or `ERROR <why>`. A
  line that never answers gives `ERROR term no response` after 2 x 60 s; a stopped engine
  `ERROR goipcron no response` after 15 s; an unknown line `ERROR Not find this TERM` (and then
  waits the 120 s all the same). Bad credentials get the HTML login page, status 200.
- The answer passes through MySQL's escaping before it is printed: a line break arrives as the
  two characters `\\n`, `It's` as `It\\'s`; that is undone here. Every `@` was removed by the
  server and cannot be brought back.
- The engine tells sessions apart by a relay id that is PHP's `time()`: two requests to one
  server started in the same second share it, and the first caller gets the second one's
  answer (another line's balance). A new session on a line also breaks the open one's answer.
  So the client sends one request per server at a time, each at least `spacing` after the
  previous one ended; after a request whose answer it did not wait for (timeout, lost
  connection, cancellation) the server's PHP is still waiting for the device (it ignores the
  client going away), so the next request waits until that session must be over.
- `$` and `?` in the code start the server's recharge-card feature, and the line name goes
  into its SQL unquoted: codes are restricted to USSD characters and line names escaped.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
import structlog
from pydantic import SecretStr

from goipd.model import USSD_CODE, USSD_CODE_RULE
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip import DatabaseFault, escape_for_sql, read_reply
from goipd.upstream.http import read_capped

log = structlog.get_logger("goipd.upstream.goip_ussd")

DEFAULT_USSD_TIMEOUT: Final = 130.0
"""ussd.php waits 2 x 60 s for the device (and up to 15 s for the engine before that)."""
SERVER_USSD_LIMIT: Final = 140.0
"""How long ussd.php can keep a session open after it started, whatever the client does."""
DEFAULT_SPACING: Final = 1.0
"""The relay id is time() in whole seconds: one second apart, two requests never share it."""
MAX_REPLY_BYTES: Final = 64 * 1024
"""A USSD answer is at most 182 characters; the login page a few kilobytes."""
MAX_MESSAGE_CHARS: Final = 120

DecimalMark = Literal[".", ","]


# --- pure parsers -------------------------------------------------------------------------------


class LoginPage(ParseError):
    """The reply is the SMS Server's login page: it refused the username or password."""


class RelayError(ParseError):
    """The SMS Server answered `ERROR ...`: the relay failed, for `reason`."""

    def __init__(self, reason: ErrorReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


_LOGIN_FORM: Final = re.compile(
    r"<form\b[^>]*\baction\s*=\s*[\"']?[^\"'>\s]*login[^>]*>"
    r"|<input\b[^>]*\btype\s*=\s*[\"']?password\b",
    re.IGNORECASE,
)
_BR_AT_END: Final = re.compile(r"<br\s*/?>\s*\Z", re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")


def reply_text(body: bytes | str) -> str:
    """A page's text after the PHP diagnostics before it. Raises DatabaseFault for `Bad query`
    and `Could not connect`."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
    return read_reply(raw).body.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")


def check_login_page(text: str) -> None:
    """Raises LoginPage when `text` is the login page (a form posting to a login script, or a
    password field)."""
    if _LOGIN_FORM.search(text[:20_000]):
        raise LoginPage("the SMS Server answered its login page: it refused the credentials")


def server_message(text: str) -> str:
    """A server's message for logs: one line, control characters out, cut short."""
    return _CONTROL.sub(" ", text).strip()[:MAX_MESSAGE_CHARS]


_MYSQL_ESCAPES: Final = {
    "0": "\0",
    "n": "\n",
    "r": "\r",
    "Z": "\x1a",
    "\\": "\\",
    "'": "'",
    '"': '"',
}
_ESCAPED: Final = re.compile(r"\\(.)", re.DOTALL)


def unescape_answer(text: str) -> str:
    """Undo MySQL's escaping (mysql_real_escape_string), which ussd.php applies to the answer
    before printing it. Anything else after a backslash is left as it came."""
    return _ESCAPED.sub(lambda m: _MYSQL_ESCAPES.get(m[1], m[0]), text)


def _ussd_error(message: str) -> RelayError:
    if "Not find this TERM" in message:
        return RelayError(ErrorReason.UNKNOWN_LINE, "the SMS Server has no such line")
    if "term no response" in message:
        return RelayError(ErrorReason.NO_RESPONSE, "the line never answered (term no response)")
    if any(part in message for part in ("goipcron no response", "sendto error", "socket_create")):
        return RelayError(
            ErrorReason.ENGINE_DOWN,
            f"the SMS Server's engine did not take the request ({server_message(message)})",
        )
    return RelayError(ErrorReason.DEVICE_ERROR, server_message(message) or "ERROR")


def parse_ussd_reply(body: bytes | str) -> str:
    """The carrier's answer from an ussd.php reply, unescaped (without its `@`s, which the
    server removed). Raises LoginPage, DatabaseFault, RelayError for `ERROR ...` and for an
    empty reply (the device ended the session without an answer), ParseError otherwise."""
    text = reply_text(body)
    if text.startswith("ERROR"):
        raise _ussd_error(text[5:])
    if text == "OK" or text.startswith("OK "):
        # The escaped answer holds no raw line break: one in the reply starts what PHP printed
        # after it (a notice, as `<br />\n<b>Notice</b>: ...`).
        answer, newline, _ = text[3:].partition("\n")
        answer = answer.rstrip("\r")
        if newline:
            answer = _BR_AT_END.sub("", answer)
        return unescape_answer(answer)
    check_login_page(text)
    if not text.strip():
        raise RelayError(
            ErrorReason.DEVICE_ERROR, "the device ended the USSD session without an answer"
        )
    raise ParseError("ussd: the reply is neither `OK <answer>` nor `ERROR ...`")


# --- balances -----------------------------------------------------------------------------------


class BalanceUnreadable(ParseError):
    """The balance pattern does not read a balance in the answer."""


_NUMBER: Final = re.compile(r"(?P<sign>[-−]\s?)?(?P<number>\d(?:[.,'’\u00a0\u202f]?\d)*)")
_ALWAYS_GROUPING: Final = "'’\u00a0\u202f"


def compile_balance_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern as parse_balance uses it; ValueError when it is not a regular expression
    (for checking configuration)."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def parse_balance(
    answer: str, pattern: str | re.Pattern[str], *, decimal: DecimalMark | None = None
) -> float:
    """The balance in a carrier's USSD answer: the first number in what `pattern` matched (its
    group `balance`, else its first group, else the whole match), searched anywhere in the
    answer. Raises BalanceUnreadable, saying why.

    The number may carry a currency (`NT$123.45`), a sign (`-5.00`) and digit grouping with
    `,` `.` `'` or a no-break space. Which of `.` and `,` is the decimal mark:
    - `decimal` set: that one; the other only groups digits.
    - otherwise: with both, the last one (`1,234.50` and `1.234,50` are 1234.5); one of them
      several times, grouping (`1,234,567`); `.` once, decimal (`12.345` is 12.345); `,` once,
      decimal unless exactly three digits follow (`12,50` is 12.5, `1,234` is 1234).
    Set `decimal` for a carrier whose `1.234` means a thousand and more.
    """
    regex = compile_balance_pattern(pattern) if isinstance(pattern, str) else pattern
    match = regex.search(answer)
    if match is None:
        raise BalanceUnreadable("the balance pattern does not match the answer")
    if "balance" in regex.groupindex:
        found = match.group("balance")
    else:
        found = match.group(1) if regex.groups else match.group(0)
    if found is None:
        raise BalanceUnreadable("the balance pattern matched, but not its balance group")
    number = _NUMBER.search(found)
    if number is None:
        raise BalanceUnreadable(f"the balance pattern matched {server_message(found)!r}: no number")
    value = _number_value(number["number"], decimal)
    negative = number["sign"] is not None or found.lstrip().startswith(("-", "−"))
    return -value if negative else value


def _number_value(text: str, decimal: DecimalMark | None) -> float:
    digits = text
    for mark in _ALWAYS_GROUPING:
        digits = digits.replace(mark, "")
    if decimal is None:
        decimal = _decimal_mark(digits)
    grouping = "," if decimal == "." else "."
    whole, _, fraction = digits.replace(grouping, "").partition(decimal)
    if decimal in fraction:
        raise BalanceUnreadable(f"{text!r} has the decimal mark {decimal!r} more than once")
    value = float(f"{whole}.{fraction or 0}")
    if not math.isfinite(value):
        raise BalanceUnreadable(f"{text[:20]!r} is not a usable number")
    return value


def _decimal_mark(digits: str) -> DecimalMark:
    dots, commas = digits.count("."), digits.count(",")
    if dots and commas:
        return "." if digits.rfind(".") > digits.rfind(",") else ","
    if dots > 1:
        return ","
    if commas > 1:
        return "."
    if commas == 1:
        after = len(digits) - digits.index(",") - 1
        return "." if after == 3 else ","
    return "."


# --- what the SMS Server's relayed pages share (ussd.php, api.php) ------------------------------


def check_line(line: str) -> None:
    if not line or len(line) > 64 or _CONTROL.search(line):
        raise ValueError("a line name is 1 to 64 characters without control characters")


def line_param(line: str, escape: bool) -> str:
    """The line name as the page must receive it: it puts the name into its SQL unquoted."""
    return escape_for_sql(line) if escape else line


def relay_session(timeout: float) -> aiohttp.ClientSession:
    """A session for pages that act on a GET: no cookies kept (a login session would skip the
    credential check), and no quiet second request after a broken connection (aiohttp repeats
    an "idempotent" GET once; here that is a second USSD session or a second reboot)."""
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


@dataclass(slots=True)
class Turn:
    started: float
    settled: bool = False
    """The server's page has finished (its reply was read, or no connection was made)."""


class Turns:
    """Requests one at a time, each starting `spacing` seconds after the previous one ended;
    after one whose page may still be running on the server (`Turn.settled` never set), not
    before `hold` seconds after it started."""

    def __init__(
        self, spacing: float, hold: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.spacing = spacing
        self.hold = hold
        self._clock = clock
        self._lock = asyncio.Lock()
        self._not_before = -math.inf

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        async with self._lock:
            wait = self._not_before - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            turn = Turn(self._clock())
            try:
                yield turn
            finally:
                not_before = self._clock() + self.spacing
                if not turn.settled:
                    not_before = max(not_before, turn.started + self.hold)
                self._not_before = not_before


async def fetch_page(
    session: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str],
    turn: Turn,
    what: str,
    limit: float,
) -> bytes:
    """GET one relayed page; its body when the status is 200. The URL carries the credentials,
    so no error here says more than a status or an exception's class."""
    try:
        async with session.get(
            url,
            params=dict(params),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            body = await read_capped(resp.content, MAX_REPLY_BYTES)
            turn.settled = True
            if resp.status != 200:
                raise UpstreamError(ErrorReason.HTTP_STATUS, f"{what}: HTTP {resp.status}")
            if body is None:
                raise UpstreamError(ErrorReason.PARSE, f"{what}: reply larger than 64 KiB")
            return body
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamError(ErrorReason.TIMEOUT, f"{what}: no reply within {limit:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        turn.settled = True  # nothing was sent: the server started nothing
        raise UpstreamError(ErrorReason.CONNECT, f"{what}: {type(exc).__name__}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(ErrorReason.DISCONNECTED, f"{what}: {type(exc).__name__}") from None


def reply_errors(what: str, page: str, exc: ParseError | DatabaseFault) -> UpstreamError:
    """A parser's failure as the client's UpstreamError."""
    if isinstance(exc, LoginPage):
        return UpstreamError(
            ErrorReason.AUTH,
            f"{what}: {page} answered the login page: check username/password (it compares "
            "the password backslash-escaped, so one holding ' \" or \\ never logs in there)",
        )
    if isinstance(exc, DatabaseFault):
        return UpstreamError(ErrorReason.SERVER_DATABASE, f"{what}: {exc}")
    if isinstance(exc, RelayError):
        return UpstreamError(exc.reason, f"{what}: {exc.message}")
    return UpstreamError(ErrorReason.PARSE, f"{what}: {exc}")


# --- client -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UssdAnswer:
    line: str
    code: str
    text: str
    """The carrier's answer, unescaped; without the `@`s the server removed."""
    elapsed: float
    """Seconds from the request to the answer."""


@dataclass(frozen=True, slots=True)
class UssdBalance:
    answer: UssdAnswer
    balance: float


class BalanceUnreadableError(UpstreamError):
    """An answer came, but the balance pattern does not read it; the answer is kept."""

    def __init__(self, detail: str, answer: UssdAnswer) -> None:
        super().__init__(ErrorReason.BALANCE_UNREADABLE, detail)
        self.answer = answer


class UssdClient:
    """USSD through one SMS Server: one request at a time, `spacing` seconds apart, up to
    `timeout` seconds for each answer. One client per SMS Server: two clients of one server
    would overlap. The time a request waits for its turn is not part of its timeout."""

    def __init__(
        self,
        name: str,
        base_url: str,
        username: str,
        password: SecretStr,
        *,
        timeout: float = DEFAULT_USSD_TIMEOUT,
        spacing: float = DEFAULT_SPACING,
        session_limit: float = SERVER_USSD_LIMIT,
        escape_line: bool = True,
        clock: Callable[[], float] = time.monotonic,
        succeeds: UssdClient | None = None,
    ) -> None:
        """`succeeds`: the client of the same server this one replaces (a reload): its
        sessions, still open or just ended, keep their turns with this one's."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.escape_line = escape_line
        self._username = username
        self._password = password
        self._clock = clock
        self._turns: Turns = (
            succeeds.turns
            if succeeds is not None
            else Turns(spacing, max(session_limit, spacing), clock)
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def busy(self) -> bool:
        """A request is under way or waiting for its turn."""
        return self._turns.busy

    @property
    def turns(self) -> Turns:
        """The order this client's sessions take on its server."""
        return self._turns

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def run(self, line: str, code: str) -> UssdAnswer:
        """Send `code` on `line` and wait for the carrier's answer."""
        check_line(line)
        if not USSD_CODE.fullmatch(code):
            raise ValueError(USSD_CODE_RULE)
        what = f"ussd {line} {code}"
        params = {
            "USERNAME": self._username,
            "PASSWORD": self._password.get_secret_value(),
            "TERMID": line_param(line, self.escape_line),
            "USSDMSG": code,
        }
        async with self._turns.turn() as turn:
            if self._session is None or self._session.closed:
                self._session = relay_session(self.timeout)
            url = f"{self.base_url}/goip/en/ussd.php"
            try:
                body = await fetch_page(self._session, url, params, turn, what, self.timeout)
            finally:
                if not turn.settled:
                    log.warning(
                        "ussd_session_abandoned",
                        server=self.name,
                        line=line,
                        hold=round(self._turns.hold, 1),
                    )
            elapsed = self._clock() - turn.started
        try:
            text = parse_ussd_reply(body)
        except (ParseError, DatabaseFault) as exc:
            raise reply_errors(what, "ussd.php", exc) from None
        return UssdAnswer(line, code, text, elapsed)

    async def balance(
        self,
        line: str,
        code: str,
        pattern: str | re.Pattern[str],
        *,
        decimal: DecimalMark | None = None,
    ) -> UssdBalance:
        """run(), then parse_balance() on the answer; a pattern that does not read it raises
        BalanceUnreadableError, which keeps the answer."""
        answer = await self.run(line, code)
        try:
            value = parse_balance(answer.text, pattern, decimal=decimal)
        except BalanceUnreadable as exc:
            detail = f"ussd {line} {code}: {exc} (answer: {server_message(answer.text)!r})"
            raise BalanceUnreadableError(detail, answer) from None
        return UssdBalance(answer, value)
