"""The GoIP SMS Server's web inbox, read the way a browser reads it.

The SMS Server keeps every SMS its lines receive in its `receive` table and pushes each one to
goipd once; a push that is lost (goipd down, the network, the engine giving up) is never
repeated, and the JSON API has no call that lists received SMS. The operator's web inbox,
`en/receive.php`, is the only other way to that table, so goipd reads it to recover them: an
HTML page of 30 rows, newest first, behind a session login (`en/dologin.php`).

What the page is like (v1.28.4) and what follows here:
- the SMS text is HTML-escaped; the number, line and time cells are printed raw, so values are
  cut from the page's source between the cell's tags rather than rebuilt from parser events;
- rows are ordered by time in whole seconds, so rows of one second can move between pages:
  `search_time` lists one second on its own;
- listing rows marks them read on the server (operators see them as read);
- without a session, or once it expired (24 minutes by default), the page is the login form
  with status 200: the client logs in again once.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

import aiohttp
from multidict import MultiMapping
from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip import DatabaseFault, read_reply
from goipd.upstream.http import read_capped, transport_errors

MAX_PAGE_BYTES = 2 * 1024 * 1024
TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_TITLES = ("Receive Time", "Source Number", "Receive goip", "SMS Text")
_ID_NAME = re.compile(r"Id\d+", re.IGNORECASE)
_TOTAL = re.compile(r"Total\s*<b>\s*([^<]*?)\s*</b>", re.IGNORECASE)
_PAGES = re.compile(
    r"pages\s*[:：]\s*<strong>\s*<font[^>]*>\s*([^<]*?)\s*</font>\s*/\s*([^<]*?)\s*</strong>",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class InboxRow:
    inbox_id: int
    received: str
    """'YYYY-MM-DD HH:MM:SS' as shown: the server's local time."""
    from_number: str
    goip_line: str | None
    text: str


@dataclass(frozen=True, slots=True)
class InboxPage:
    rows: tuple[InboxRow, ...]
    page: int
    """The page shown: the server shows its last page when asked for one past the end."""
    pages: int
    """Pages holding rows: 0 for an empty inbox."""
    total: int


class LoginRequired(ParseError):
    """The reply is the login form: no session, or it expired."""


class LoginRefused(ParseError):
    """dologin.php answered its refusal page: wrong or empty username or password."""


# --- pure parsers -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cell:
    start: int
    end: int = -1
    text: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Table:
    rows: list[list[_Cell]] = field(default_factory=list)
    cell: _Cell | None = None


class _PageReader(HTMLParser):
    """Tables as rows of cells, each with its source span, its text and its Id checkboxes."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[_Table] = []
        self.login_form = False
        self._open: list[_Table] = []
        self._line_starts = [0]
        self._line_starts += [m.end() for m in re.finditer("\n", source)]

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def _close_cell(self, table: _Table) -> None:
        if table.cell is not None:
            table.cell.end = self._offset()
            table.cell = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        table = self._open[-1] if self._open else None
        cell = table.cell if table is not None else None
        if tag == "form":
            action = urlsplit(values.get("action", "")).path.lower()
            self.login_form |= action.endswith("dologin.php")
        elif tag == "table":
            self._open.append(_Table())
            self.tables.append(self._open[-1])
        elif tag == "tr" and table is not None:
            self._close_cell(table)
            table.rows.append([])
        elif tag in ("td", "th") and table is not None and table.rows:
            self._close_cell(table)
            table.cell = _Cell(self._offset() + len(self.get_starttag_text() or ""))
            table.rows[-1].append(table.cell)
        elif tag == "input" and cell is not None and _ID_NAME.fullmatch(values.get("name", "")):
            cell.ids.append(values.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag in ("td", "th", "tr", "table"):
            self._close_cell(self._open[-1])
            if tag == "table":
                self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1].cell is not None:
            self._open[-1].cell.text.append(data)


def _decode(body: bytes | str) -> str:
    """The page as text; a database failure (`Bad query`) is a DatabaseFault."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
    # The raw cells may hold bytes that are not UTF-8; they must not cost the whole page.
    return read_reply(raw).body.decode("utf-8", "replace")


def parse_inbox_page(body: bytes | str) -> InboxPage:
    """One page of receive.php. Raises LoginRequired for the login form, DatabaseFault for
    `Bad query`, ParseError for anything that is not the inbox. Messages never quote a cell."""
    source = _decode(body)
    reader = _PageReader(source)
    reader.feed(source)
    reader.close()
    if reader.login_form:
        raise LoginRequired("inbox page: the login form (no session, or it expired)")
    for table in reader.tables:
        for index, row in enumerate(table.rows):
            titles = [" ".join("".join(cell.text).split()) for cell in row]
            if all(title in titles for title in _TITLES):
                columns = [titles.index(title) for title in _TITLES]
                rows = _rows(source, table.rows[index + 1 :], columns, len(row))
                after = max(cell.end for cells in table.rows for cell in cells)
                return _pager(source[after:], rows)
    raise ParseError("inbox page: no header row with the titles " + ", ".join(_TITLES))


def _rows(
    source: str, rows: list[list[_Cell]], columns: list[int], width: int
) -> tuple[InboxRow, ...]:
    parsed: list[InboxRow] = []
    seen: set[int] = set()
    for n, cells in enumerate(rows, 1):
        ids = [value for cell in cells for value in cell.ids]
        if len(ids) != 1:
            many = "no" if not ids else "more than one"
            raise ParseError(f"inbox page: row {n} has {many} id checkbox")
        if not (ids[0].isascii() and ids[0].isdigit()):
            raise ParseError(f"inbox page: row {n}: the id checkbox holds no number")
        # A raw cell holding `<td>` shifts the others: no row beats a number read as its text.
        if len(cells) != width:
            raise ParseError(f"inbox page: row {n} has {len(cells)} cells, the header {width}")
        if any(cell.end < 0 for cell in cells):
            raise ParseError(f"inbox page: row {n} is cut short")
        time, source_number, line, text = (source[cells[i].start : cells[i].end] for i in columns)
        if not TIME_FORMAT.fullmatch(time.strip()):
            raise ParseError(f"inbox page: row {n}: Receive Time is not YYYY-MM-DD HH:MM:SS")
        inbox_id = int(ids[0])
        if inbox_id in seen:
            raise ParseError(f"inbox page: row {n}: id {inbox_id} listed twice")
        seen.add(inbox_id)
        parsed.append(
            InboxRow(
                inbox_id=inbox_id,
                received=time.strip(),
                from_number=source_number.strip(),
                goip_line=line.strip() or None,
                text=html.unescape(text),
            )
        )
    return tuple(parsed)


def _pager(tail: str, rows: tuple[InboxRow, ...]) -> InboxPage:
    total_match, pages_match = _TOTAL.search(tail), _PAGES.search(tail)
    if total_match is None or pages_match is None:
        raise ParseError("inbox page: no pager (Total <b>N</b> ... pages:P/N) after the rows")
    numbers = (total_match.group(1), *pages_match.groups())
    if not all(n.isascii() and n.isdigit() for n in numbers):
        raise ParseError("inbox page: the pager's counts are not numbers")
    total, page, pages = (int(n) for n in numbers)
    if total == 0 and not rows and pages <= 1:
        return InboxPage((), page=1, pages=0, total=0)
    if not (1 <= page <= pages) or len(rows) > total or total == 0:
        raise ParseError(
            f"inbox page: the pager does not add up (page {page} of {pages}, "
            f"{len(rows)} rows of {total})"
        )
    return InboxPage(rows, page=page, pages=pages, total=total)


def _set_cookies(headers: MultiMapping[str]) -> dict[str, str]:
    """name -> value of the reply's Set-Cookie headers; "" for a cookie being deleted."""
    cookies: dict[str, str] = {}
    for header in headers.getall("Set-Cookie", []):
        name, _, value = header.split(";", 1)[0].partition("=")
        if name.strip():
            value = value.strip()
            cookies[name.strip()] = "" if value == "deleted" else value
    return cookies


def parse_login_reply(status: int, body: bytes | str, headers: MultiMapping[str]) -> dict[str, str]:
    """The session cookies dologin.php set, from its 302 to index.php. Raises LoginRefused for
    its refusal page, DatabaseFault for `Bad query`, ParseError for anything else."""
    if status in (301, 302, 303, 307):
        if not urlsplit(headers.get("Location", "")).path.endswith("index.php"):
            raise ParseError(f"login: HTTP {status} to somewhere other than index.php")
        cookies = {name: value for name, value in _set_cookies(headers).items() if value}
        if not cookies:
            raise ParseError(f"login: HTTP {status} without a session cookie")
        return cookies
    if status != 200:
        raise ParseError(f"login: HTTP {status}, expected 302 or 200")
    page = _decode(body)
    if "The name or password error" in page:
        raise LoginRefused("the SMS Server refused the username or password")
    if "please input" in page:
        raise LoginRefused("the SMS Server found the username or password empty")
    raise ParseError("login: HTTP 200 without the redirect or a refusal")


# --- client -------------------------------------------------------------------------------------

_APOSTROPHE_NOTE = (
    "check username/password; dologin.php drops ' from passwords, "
    "so a password holding ' can never log in to the web inbox"
)


@contextmanager
def _reply_errors(what: str) -> Iterator[None]:
    """A parser's failure inside the block as UpstreamError; LoginRequired is left to the
    caller, which logs in again."""
    try:
        yield
    except LoginRequired:
        raise
    except LoginRefused as exc:
        raise UpstreamError(
            ErrorReason.INBOX_LOGIN, f"{what}: {exc} ({_APOSTROPHE_NOTE})"
        ) from None
    except DatabaseFault as exc:
        raise UpstreamError(ErrorReason.SERVER_DATABASE, f"{what}: {exc}") from None
    except ParseError as exc:
        detail = str(exc).removeprefix("inbox page: ").removeprefix("login: ")
        raise UpstreamError(ErrorReason.INBOX_LAYOUT, f"{what}: {detail}") from None


class InboxClient:
    """One SMS Server's web inbox, read one page at a time over one connection. The session
    cookie is kept here, not in aiohttp's jar: that jar ignores cookies from IP-address hosts,
    and SMS Servers are usually addressed by IP."""

    def __init__(
        self,
        name: str,
        base_url: str,
        username: str,
        password: SecretStr,
        timeout: float,
        *,
        max_page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_page_bytes = max_page_bytes
        self._username = username
        self._password = password
        self._cookies: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=1),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def page(self, number: int) -> InboxPage:
        """Page `number` (from 1) of the whole inbox, newest first."""
        if number < 1:
            raise ValueError("inbox pages count from 1")
        return await self._read(f"inbox page {number}", {"page": str(number)})

    async def search_time(self, received: str, page: int = 1) -> InboxPage:
        """Page `page` of the rows received in the second `received` ('YYYY-MM-DD HH:MM:SS')."""
        if not TIME_FORMAT.fullmatch(received) or page < 1:
            raise ValueError("search_time takes 'YYYY-MM-DD HH:MM:SS' and a page from 1")
        query = {"action": "search", "column": "time", "type": "equal", "s_key": received}
        return await self._read(f"inbox search page {page}", {**query, "page": str(page)})

    async def _read(self, what: str, query: dict[str, str]) -> InboxPage:
        async with self._lock:
            # A session kept from an earlier call may have expired: one new login, one retry.
            kept = bool(self._cookies)
            for attempt in range(2 if kept else 1):
                if attempt or not kept:
                    await self._login()
                with suppress(LoginRequired):
                    return await self._get(what, query)
            self._cookies = {}
            raise UpstreamError(
                ErrorReason.INBOX_LOGIN, f"{what}: still the login form right after a login"
            )

    async def _login(self) -> None:
        self._cookies = {}
        form = {"username": self._username, "password": self._password.get_secret_value()}
        status, headers, body = await self._request("inbox login", "dologin.php", data=form)
        if status >= 400:
            raise UpstreamError(ErrorReason.HTTP_STATUS, f"inbox login: HTTP {status}")
        with _reply_errors("inbox login"):
            self._cookies = parse_login_reply(status, body, headers)

    async def _get(self, what: str, query: dict[str, str]) -> InboxPage:
        status, headers, body = await self._request(what, "receive.php", query=query)
        if status != 200:
            raise UpstreamError(ErrorReason.HTTP_STATUS, f"{what}: HTTP {status}")
        # As a browser does, a cookie any page renews or deletes is renewed or deleted.
        merged = {**self._cookies, **_set_cookies(headers)}
        self._cookies = {name: value for name, value in merged.items() if value}
        with _reply_errors(what):
            return parse_inbox_page(body)

    async def _request(
        self,
        what: str,
        page: str,
        *,
        query: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[int, MultiMapping[str], bytes]:
        url = f"{self.base_url}/goip/en/{page}"
        cookie = "; ".join(f"{name}={value}" for name, value in self._cookies.items())
        with transport_errors(what, self.timeout):
            # Never follow a redirect: dologin's 302 carries the cookie to keep, and a page
            # that redirects must not take the session cookie along to wherever it points.
            async with self._get_session().request(
                "GET" if data is None else "POST",
                url,
                params=query,
                data=data,
                headers={"Cookie": cookie} if cookie else None,
                allow_redirects=False,
            ) as resp:
                return resp.status, resp.headers, await self._read_body(resp, what)

    async def _read_body(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        body = await read_capped(resp.content, self.max_page_bytes)
        if body is None:
            raise UpstreamError(
                ErrorReason.PARSE, f"{what}: reply larger than {self.max_page_bytes} bytes"
            )
        return body
