"""The SMS Server's web inbox: v1.28.4's `receive` table and the two pages that read it,
`en/dologin.php` (a PHP session from the web login) and `en/receive.php` (the table, 30 rows a
page, newest first). It is the only way to recover an inbound SMS whose push was lost.

Modelled as the PHP does it: listing marks the listed rows read; the text is HTML-escaped and
every other cell printed raw; a search puts the column name and key into SQL (a column the
table lacks gives `Bad query: Unknown column ...`); rows of the same second come in no fixed
order (`inbox_ties`), so they can move between pages from one request to the next. The
`changed` layout stands for a vendor update that restructured the page.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from goipd.sim.goip.inbox_pages import (
    PER_PAGE,
    changed_page,
    error_page,
    login_form,
    table_page,
)
from goipd.sim.goip_sql import (
    NEAR_CHARS,
    SQL_ERROR_NEAR,
    BadQuery,
    mysql_ci_key,
    mysql_number,
    run_statement,
)

TIES: Final = ("shuffled", "stable")
LAYOUTS: Final = ("v1.28.4", "changed")
SESSION_COOKIE: Final = "PHPSESSID"
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
SQL_LOGIN: Final = "SELECT id,permissions FROM user WHERE username='{}' and password='{}' "
SQL_COUNT: Final = "SELECT count(*) AS count FROM receive {where}"
SEARCHES: Final = {
    "equal": "='{}'",
    "unequal": "!='{}'",
    "prefix": " like '{}%'",
    "postfix": " like '%{}'",
    "contain": " like '%{}%'",
}
"""receive.php's search types: what each appends to `and \\`column\\``."""
_LIKE: Final = {"prefix": "{}%", "postfix": "%{}", "contain": "%{}%"}
_INT_COLUMNS: Final = frozenset({"id", "provid", "goipid", "srcid", "srclevel", "status"})
_DATE_COLUMNS: Final = frozenset({"time", "senttime"})
_COLUMNS: Final = _INT_COLUMNS | _DATE_COLUMNS | {"srcnum", "msg", "goipname", "srcname", "smscnum"}
_PHP_TRIM: Final = " \t\n\r\0\x0b"


class InboxSettings(Protocol):
    """What the pages need of their server (a `ServerState`)."""

    username: str
    password: str
    session_time: int
    inbox_ties: str
    inbox_layout: str


@dataclass
class ReceiveRow:
    """One `receive` row (the columns goipd may read; the rest keep the table's defaults)."""

    id: int
    srcnum: str
    msg: str
    time: str
    goipid: int
    """The line's `goip.id` at receipt; 0 when the engine did not know the line."""
    goipname: str
    status: int = 0
    """0 not read, 1 read (listing it marks it)."""
    smscnum: str = ""
    srcname: str = ""
    provid: int = 0
    srcid: int = 0
    srclevel: int = 0
    senttime: str = "0000-00-00 00:00:00"

    def control(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WebReply:
    """One page: always `text/html`; headers may repeat (two Set-Cookie after a login)."""

    status: int
    text: str
    headers: tuple[tuple[str, str], ...] = ()


class Inbox:
    """One server's `receive` table and its PHP sessions.

    `clock` (Unix time) dates new rows and times sessions: tests replace it to expire one.
    """

    def __init__(self, seed: str, clock: Callable[[], float] = time.time) -> None:
        self.rows: list[ReceiveRow] = []
        self.sessions: dict[str, float] = {}
        """PHPSESSID → when its login ends (clock time)."""
        self.clock = clock
        self.rng = random.Random(f"inbox:{seed}")
        self._last_id = 0

    def store(
        self, srcnum: str, msg: str, when: str | None, goipid: int, goipname: str
    ) -> ReceiveRow:
        self._last_id += 1
        stamp = when or datetime.fromtimestamp(self.clock()).strftime(TIME_FORMAT)
        row = ReceiveRow(self._last_id, srcnum, msg, stamp, goipid, goipname)
        self.rows.append(row)
        return row

    # --- en/dologin.php ---------------------------------------------------------------------

    def login(
        self,
        server: InboxSettings,
        form: Mapping[str, str],
        cookie: str | None,
        *,
        refuse: bool = False,
    ) -> WebReply:
        sid, headers = self._session_start(cookie)
        username = form.get("username", "").strip(_PHP_TRIM).replace("'", "")
        password = form.get("password", "").strip(_PHP_TRIM).replace("'", "")
        errors = []
        if not username:
            errors.append("please input name!")
        if not password:
            errors.append("please input password!")
        if errors:
            return WebReply(200, error_page(errors), headers)
        digest = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
        try:
            name, _ = run_statement(SQL_LOGIN, [username, digest])
        except BadQuery as exc:
            return WebReply(200, exc.reply, headers)
        known = mysql_ci_key(name) == mysql_ci_key(server.username)
        if refuse or not known or password != server.password:
            return WebReply(200, error_page(["The name or password error"]), headers)
        ends = self.clock() + server.session_time * 60
        self.sessions[sid] = ends
        expires = time.strftime("%a, %d-%b-%Y %H:%M:%S GMT", time.gmtime(ends))
        cookie_header = f"{SESSION_COOKIE}={sid}; expires={expires}; path=/"
        return WebReply(
            302, "", (*headers, ("Set-Cookie", cookie_header), ("Location", "index.php"))
        )

    def _session_start(self, cookie: str | None) -> tuple[str, tuple[tuple[str, str], ...]]:
        """PHP 5's session_start(): takes the id the client sent, known or not (no strict
        mode); without one makes an id and sends it as a browser-session cookie."""
        if cookie:
            return cookie, ()
        sid = secrets.token_hex(16)
        return sid, (("Set-Cookie", f"{SESSION_COOKIE}={sid}; path=/"),)

    def logged_in(self, cookie: str | None) -> bool:
        ends = self.sessions.get(cookie or "")
        if ends is None:
            return False
        if self.clock() < ends:
            return True
        del self.sessions[cookie or ""]
        return False

    # --- en/receive.php ---------------------------------------------------------------------

    def page(
        self,
        server: InboxSettings,
        params: Mapping[str, str],
        page: str | None,
        cookie: str | None,
        *,
        refuse: bool = False,
    ) -> WebReply:
        """The list. `params` is PHP's $_REQUEST (query and form), `page` its $_GET['page']."""
        if refuse or not self.logged_in(cookie):
            _, headers = self._session_start(cookie)
            return WebReply(200, login_form(), headers)
        search = None
        if params.get("action") == "search":
            search = (params.get("column", ""), params.get("type", ""), params.get("s_key", ""))
        try:
            match = _where(search)
            hits = [row for row in self.rows if match(row)]
        except BadQuery as exc:
            return WebReply(200, exc.reply)
        current, shown = _page_number(page, math.ceil(len(hits) / PER_PAGE))
        start = (current - 1) * PER_PAGE
        listed = self._ordered(hits, server.inbox_ties)[start : start + PER_PAGE]
        for row in listed:
            row.status = 1
        if server.inbox_layout == "changed":
            return WebReply(200, changed_page(listed, current, len(hits)))
        column, kind, key = (_addslashes(value) for value in search or ("", "", ""))
        base = f"receive.php?action={'search' if search else ''}"
        base += f"&column={column}&type={kind}&s_key={key}&"
        posted = (column, kind, search[2] if search else "")
        return WebReply(200, table_page(listed, base, current, shown, len(hits), posted))

    def _ordered(self, rows: list[ReceiveRow], ties: str) -> list[ReceiveRow]:
        """ORDER BY time DESC: MySQL leaves rows of the same second in no set order."""
        ordered = sorted(rows, key=lambda row: row.id)
        if ties == "shuffled":
            self.rng.shuffle(ordered)
        ordered.sort(key=lambda row: row.time, reverse=True)  # stable: ties keep that order
        return ordered


def _addslashes(text: str) -> str:
    """PHP's addslashes (receive.php's myaddslashes without magic quotes)."""
    return text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\0", "\\0")


def _where(search: tuple[str, str, str] | None) -> Callable[[ReceiveRow], bool]:
    """receive.php's WHERE, from the (column, type, key) posted, as a test of a row; raises
    BadQuery where MySQL refuses it."""
    if search is None:
        return lambda row: True
    column, kind, key = search
    where = f" where 1 and `{_addslashes(column)}`"
    if kind in SEARCHES:
        where += SEARCHES[kind].format(_addslashes(key))
    sql = SQL_COUNT.format(where=where)
    if "`" in column:
        near = sql.index("`") + 1 + _addslashes(column).index("`") + 1
        raise BadQuery(SQL_ERROR_NEAR.format(near=sql[near : near + NEAR_CHARS], line=1), sql)
    name = column.lower()
    if name not in _COLUMNS:
        raise BadQuery(f"Unknown column '{_addslashes(column)}' in 'where clause'", sql)
    # The key went through addslashes and then MySQL's literal parsing: it is as posted.
    return lambda row: _matches(name, getattr(row, name), kind, key)


def _matches(column: str, cell: Any, kind: str, key: str) -> bool:
    text = str(cell)
    if kind in ("equal", "unequal"):
        if column in _INT_COLUMNS:
            same = float(cell) == mysql_number(key)
        elif column in _DATE_COLUMNS:
            same = text == key  # a key in the column's own format (MySQL reads others, too)
        else:
            same = mysql_ci_key(text) == mysql_ci_key(key)
        return same if kind == "equal" else not same
    if kind in _LIKE:
        return _like(text, _LIKE[kind].format(key))
    return mysql_number(text) != 0  # `and \`column\`` alone: the cell as a truth value


def _fold(text: str) -> str:
    """utf8_general_ci, roughly: case and accents do not count (LIKE keeps trailing spaces)."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).upper()


def _like(text: str, pattern: str) -> bool:
    regex, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            regex.append(re.escape(_fold(pattern[index])))
        elif char == "%":
            regex.append(".*")
        elif char == "_":
            regex.append(".")
        else:
            regex.append(re.escape(_fold(char)))
        index += 1
    return re.fullmatch("".join(regex), _fold(text), re.DOTALL) is not None


def _page_number(raw: str | None, pages: int) -> tuple[int, str]:
    """receive.php's `$page`: its number, and how showpage() prints it (as it was sent,
    unless the PHP replaced it: past the last page, the last; below 2, 1)."""
    number = mysql_number(raw or "1")  # PHP 5 compares a string by its leading number
    if pages and number > pages:
        return pages, str(pages)
    if not number > 1:
        return 1, "1"
    # A fractional page would make a fractional LIMIT; taken as its whole part here.
    return int(number), raw or "1"


# --- the pages ----------------------------------------------------------------------------------
# Written for the simulator: what a client reads from the vendor's pages (the row and header
# structure, the pager's text) is kept, the look is not.
