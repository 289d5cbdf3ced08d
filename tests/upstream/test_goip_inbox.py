"""The SMS Server's web inbox (en/receive.php): the page parser on pages laid out as v1.28.4's
template prints them, the login reply, and the client against a small inbox server over
loopback HTTP (login, expired sessions, refusals, layout changes, transport failures)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pydantic import SecretStr

from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.goip import DatabaseFault
from goipd.upstream.goip_inbox import (
    MAX_PAGE_BYTES,
    InboxClient,
    InboxPage,
    InboxRow,
    LoginRefused,
    LoginRequired,
    parse_inbox_page,
    parse_login_reply,
)
from tests.helpers.cloud import refused_url, serve_routes

SECRET_TEXT = "the-secret-sms-body"

# --- pages as the server prints them ------------------------------------------------------------


def php_escape(text: str) -> str:
    """htmlspecialchars with ENT_QUOTES, as the template escapes the SMS text."""
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(raw, entity)
    return text.replace("'", "&#039;")


@dataclass(frozen=True)
class Sms:
    inbox_id: int
    time: str
    srcnum: str
    goipname: str
    msg: str
    smscnum: str = "+8613800100500"


TITLES = (
    "choose",
    "Receive Time",
    "SMSC Number",
    "Source Number",
    "Phone book match",
    "Receive goip",
    "SMS Text",
    "Operator",
)


def pager(page: int, total: int, per_page: int = 30) -> str:
    """The pager text showpage() prints (its links left out but for their shape)."""
    pages = -(-total // per_page)
    back = "index backward&nbsp;" if page < 2 else "<a href='receive.php?page=1'>index</a>&nbsp;"
    ahead = "forward end" if pages - page < 1 else "<a href='receive.php?page=2'>forward</a>"
    options = "".join(f"<option value='{i}'>The{i}page</option>" for i in range(1, pages + 1))
    return (
        f"<table align='center'><tr><td>Total <b>{total}</b> row(s) &nbsp;&nbsp;{back}{ahead}"
        f" &nbsp;pages:<strong><font color=red>{page}</font>/{pages}</strong>page "
        f" &nbsp;<b>{per_page}</b>row(s)/page &nbsp;goto:<select name='page'>{options}</select>"
        "</td></tr></table>"
    )


def inbox_html(
    rows: Sequence[Sms],
    *,
    page: int = 1,
    total: int | None = None,
    titles: Sequence[str] = TITLES,
    pager_html: str | None = None,
    warning: str = "",
) -> str:
    head = "".join(f'\n\t\t<td align="center"><b>{title}</b></td>' for title in titles)
    body = []
    for j, sms in enumerate(rows):
        cells = {
            "choose": f'<input name="Id{j}" type=\'checkbox\' value="{sms.inbox_id}">',
            "Receive Time": sms.time,
            "SMSC Number": sms.smscnum,
            "Source Number": sms.srcnum,
            "Phone book match": "",
            "Receive goip": sms.goipname,
            "SMS Text": php_escape(sms.msg),
            "Operator": f'<a href="send.php?type=re&reid={sms.inbox_id}">Reply</a>',
        }
        tds = "".join(f'\n\t\t<td align="center">{cells.get(title, "")}</td>' for title in titles)
        body.append(
            f'\n<!-- \n-->\n\t<tr class="even" onMouseOver="over(this)">   {tds}\n    </tr>'
        )
    if pager_html is None:
        pager_html = pager(page, len(rows) if total is None else total)
    return (
        f"{warning}<html>\n<head>\n<meta charset=utf-8>\n<title>Inbox</title>\n"
        "<script>function f(e){ if (a<b && e.tagName!='TR') return '</td>'; }</script>\n"
        "</head>\n<body>\n<table><tr class=topbg><td><strong>Inbox</strong></td></tr></table>\n"
        '<!--\n-->\n<form action="receive.php?action=search" method="post">Search</form>\n'
        '<form action="receive.php?action=del" method=post name=myform>\n'
        f'<table width="100%" border="0">\n\t<tr class="title">{head}\n\t</tr>\n'
        f'{"".join(body)}\n</table>\n<input type="hidden" name="boxs" value="{len(rows)}">\n'
        '<table width="100%"><tr><td><input name="chkAll" type="checkbox" id="chkAll"></td></tr>'
        f"\n<tr><td align=center>{pager_html}</td></tr>\n</table>\n</form>\n</body>\n</html>\n"
    )


LOGIN_FORM = (
    "<html><head><title>GoIP SMS Server</title></head><body>\n"
    '<form name="login" method="post" action="dologin.php">\n'
    'User<input type="text" name="username"> Password<input type="password" name="password">\n'
    '<input type="submit" value="Login"></form></body></html>\n'
)


def refusal(message: str) -> str:
    return (
        "<html><head><title>Error Information</title></head><body><table><tr><td><strong>"
        f"Wrong message</strong></td></tr><tr><td><b> Reasons:</b><br> <br><li>{message}</li>"
        "</td></tr></table></body></html>"
    )


SAMPLE = [
    Sms(31, "2024-05-02 10:15:07", "+8613912345678", "G101", "Tom & Jerry <3 'quoted' \"too\""),
    Sms(30, "2024-05-02 10:15:07", "10086", "", "  two\r\nlines\n  kept  "),
    Sms(
        29,
        "2024-05-01 23:59:59",
        "AT&T",
        "G102",
        f"a cell that says </td><td> in its text, {SECRET_TEXT}",
    ),
]

# --- the page parser ----------------------------------------------------------------------------


def test_rows_are_read_with_their_text_unescaped_exactly() -> None:
    page = parse_inbox_page(inbox_html(SAMPLE).encode())
    assert page == InboxPage(
        rows=(
            InboxRow(31, "2024-05-02 10:15:07", "+8613912345678", "G101", SAMPLE[0].msg),
            InboxRow(30, "2024-05-02 10:15:07", "10086", None, "  two\r\nlines\n  kept  "),
            InboxRow(29, "2024-05-01 23:59:59", "AT&T", "G102", SAMPLE[2].msg),
        ),
        page=1,
        pages=1,
        total=3,
    )


def test_entities_in_the_page_source_are_undone_once() -> None:
    source = inbox_html([Sms(1, "2024-01-01 00:00:00", "1", "G1", "x")]).replace(
        ">x</td>", ">&amp;lt; &#039;&amp;amp;&#039; caf&eacute; &#x263A;</td>"
    )
    (row,) = parse_inbox_page(source).rows
    assert row.text == "&lt; '&amp;' café ☺"


@settings(max_examples=200)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=200))
def test_any_text_comes_back_as_stored(text: str) -> None:
    sms = [
        Sms(7, "2024-01-01 00:00:00", "555", "G1", text),
        Sms(6, "2024-01-01 00:00:00", "5", "", text),
    ]
    page = parse_inbox_page(inbox_html(sms).encode())
    assert [row.text for row in page.rows] == [text, text]


def test_empty_inbox() -> None:
    expected = InboxPage((), page=1, pages=0, total=0)
    assert parse_inbox_page(inbox_html([])) == expected
    # Asked for a page past the end of an empty inbox, the server shows that page "of 0".
    assert parse_inbox_page(inbox_html([], page=4)) == expected
    assert parse_inbox_page(inbox_html([], pager_html=pager(1, 30).replace("30", "0", 1))) == (
        expected
    )


def test_page_two_of_three() -> None:
    rows = [Sms(100 - i, "2024-03-03 08:00:00", "1234", "G1", f"m{i}") for i in range(30)]
    page = parse_inbox_page(inbox_html(rows, page=2, total=75))
    assert (page.page, page.pages, page.total, len(page.rows)) == (2, 3, 75, 30)
    assert page.rows[0].inbox_id == 100 and page.rows[-1].text == "m29"


def test_columns_are_found_by_title_not_position() -> None:
    titles = ("SMS Text", "Receive goip", "choose", "Source Number", "Receive Time")
    (row,) = parse_inbox_page(inbox_html(SAMPLE[:1], titles=titles)).rows
    assert row == InboxRow(31, "2024-05-02 10:15:07", "+8613912345678", "G101", SAMPLE[0].msg)


def test_php_warnings_before_the_page_are_passed_over() -> None:
    warning = "<br />\n<b>Warning</b>:  session_start(): open failed in <b>x.php</b> on line <b>2</b><br />\n"
    assert parse_inbox_page(inbox_html(SAMPLE, warning=warning)).total == 3


def test_the_login_form_means_login_required() -> None:
    with pytest.raises(LoginRequired, match="login form"):
        parse_inbox_page(LOGIN_FORM.encode())
    assert issubclass(LoginRequired, ParseError)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            inbox_html(SAMPLE, titles=[t.replace("SMS Text", "Message") for t in TITLES]),
            "no header row",
        ),
        (inbox_html(SAMPLE).replace('name="Id1"', 'name="pick1"'), "row 2 has no id checkbox"),
        (inbox_html(SAMPLE).replace('value="29"', 'value="x29"'), "row 3: the id checkbox"),
        (
            inbox_html(SAMPLE).replace("2024-05-01 23:59:59", "01/05/2024 23:59"),
            "row 3: Receive Time",
        ),
        (inbox_html(SAMPLE, pager_html="<p>no pager here</p>"), "no pager"),
        (
            inbox_html(SAMPLE, pager_html=pager(1, 3).replace(">1</font>", ">one</font>")),
            "not numbers",
        ),
        (inbox_html(SAMPLE, pager_html=pager(1, 3).replace("<b>3</b>", "<b></b>")), "not numbers"),
        (inbox_html(SAMPLE, total=2), "does not add up"),
        (inbox_html(SAMPLE, total=0), "does not add up"),
        (inbox_html(SAMPLE, page=3, total=40), "does not add up"),
        (inbox_html(SAMPLE).replace('value="30"', 'value="31"'), "id 31 listed twice"),
        (inbox_html(SAMPLE).replace('<td align="center">10086</td>', ""), "row 2 has 7 cells"),
        ("<html><body>Permission denied!</body></html>", "no header row"),
        ("", "no header row"),
    ],
)
def test_a_page_that_is_not_the_inbox_is_a_parse_error(source: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as caught:
        parse_inbox_page(source)
    assert str(caught.value).startswith("inbox page: ")
    assert SECRET_TEXT not in str(caught.value)
    assert not isinstance(caught.value, LoginRequired)


def test_a_pager_inside_a_raw_cell_is_not_taken_for_the_real_one() -> None:
    fake = "Total <b>9</b> pages:<strong><font color=red>1</font>/1</strong>"
    sms = [Sms(1, "2024-01-01 00:00:00", "1", fake, "x")]
    with pytest.raises(ParseError, match="no pager"):
        parse_inbox_page(inbox_html(sms, pager_html="gone"))


def test_bad_query_is_a_database_fault() -> None:
    body = b"Bad query: You have an error in your SQL syntax(SELECT * from receive where 1 and `x`)"
    with pytest.raises(DatabaseFault) as caught:
        parse_inbox_page(body)
    assert "SELECT" not in str(caught.value)


# --- the login reply ----------------------------------------------------------------------------


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_login_succeeds_with_a_redirect_and_the_session_cookie() -> None:
    reply = headers(
        ("Set-Cookie", "PHPSESSID=abc123; path=/"),
        ("Set-Cookie", "PHPSESSID=abc123; expires=Thu, 02-May-2024 10:39:07 GMT; path=/"),
        ("Location", "index.php"),
    )
    assert parse_login_reply(302, b"", reply) == {"PHPSESSID": "abc123"}


@pytest.mark.parametrize(
    ("status", "body", "reply", "error", "message"),
    [
        (200, refusal("The name or password error"), headers(), LoginRefused, "refused"),
        (200, refusal("please input password!"), headers(), LoginRefused, "empty"),
        (200, LOGIN_FORM, headers(), ParseError, "without the redirect"),
        (302, "", headers(("Location", "index.php")), ParseError, "without a session cookie"),
        (
            302,
            "",
            headers(("Location", "http://elsewhere/"), ("Set-Cookie", "PHPSESSID=a")),
            ParseError,
            "other than index.php",
        ),
        (204, "", headers(), ParseError, "HTTP 204"),
        (200, "Could not connect", headers(), DatabaseFault, "cannot reach its database"),
    ],
)
def test_login_refusals_and_odd_replies(
    status: int, body: str, reply: CIMultiDict[str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_login_reply(status, body, reply)


# --- the client against a small inbox server ----------------------------------------------------

PASSWORD = "inbox-pw-7f3a"
PER_PAGE = 30


@dataclass
class InboxServer:
    """The SMS Server's login and inbox as a browser meets them: a session cookie from
    dologin.php's 302, the login form (200) without a valid session, 30 rows a page."""

    rows: list[Sms] = field(default_factory=list)
    password: str = PASSWORD
    sessions: set[str] = field(default_factory=set)
    mode: str = "inbox"
    logins: int = 0
    index_hits: int = 0
    cookies_seen: list[str | None] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)

    async def dologin(self, request: web.Request) -> web.Response:
        self.logins += 1
        form = await request.post()
        username = str(form.get("username", "")).strip().replace("'", "")
        password = str(form.get("password", "")).strip().replace("'", "")
        if not username or not password:
            return web.Response(text=refusal("please input password!"), content_type="text/html")
        if username != "goipd" or password != self.password:
            return web.Response(
                text=refusal("The name or password error"), content_type="text/html"
            )
        session = secrets.token_hex(13)
        if self.mode != "login_ignored":
            self.sessions.add(session)
        reply = web.Response(status=302, headers={"Location": "index.php"})
        reply.headers.add("Set-Cookie", f"PHPSESSID={session}; path=/")
        reply.headers.add(
            "Set-Cookie", f"PHPSESSID={session}; expires=Thu, 01-Jan-2099 00:00:00 GMT; path=/"
        )
        return reply

    async def index(self, request: web.Request) -> web.Response:
        self.index_hits += 1
        return web.Response(text="<html>frames</html>", content_type="text/html")

    async def receive(self, request: web.Request) -> web.StreamResponse:
        self.cookies_seen.append(request.headers.get("Cookie"))
        self.queries.append(dict(request.query))
        if request.cookies.get("PHPSESSID") not in self.sessions:
            return web.Response(text=LOGIN_FORM, content_type="text/html")
        if self.mode == "changed":
            return web.Response(
                text=inbox_html(self.rows, titles=["Time", "From", "Text"]),
                content_type="text/html",
            )
        if self.mode == "bad_query":
            return web.Response(text="Bad query: Table 'goip.receive' doesn't exist(SELECT 1)")
        if self.mode == "http_500":
            return web.Response(status=500, text="oops")
        if self.mode == "redirect":
            raise web.HTTPFound("index.php")
        if self.mode == "slow":
            await asyncio.sleep(2)
        rows = self.rows
        if request.query.get("action") == "search":
            rows = [sms for sms in rows if sms.time == request.query.get("s_key")]
        pages = -(-len(rows) // PER_PAGE)
        page = max(1, min(int(request.query.get("page", "1")), pages or 1))
        shown = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
        text = inbox_html(shown, page=page, total=len(rows))
        if self.mode != "chunked":
            return web.Response(text=text, content_type="text/html")
        stream = web.StreamResponse(headers={"Content-Type": "text/html"})
        await stream.prepare(request)
        data = text.encode()
        for at in range(0, len(data), 4096):
            await stream.write(data[at : at + 4096])
            await asyncio.sleep(0)
        await stream.write_eof()
        return stream


@pytest.fixture
async def server() -> AsyncIterator[tuple[InboxServer, str]]:
    inbox = InboxServer(rows=list(SAMPLE))
    async with serve_routes(
        web.post("/hq/goip/en/dologin.php", inbox.dologin),
        web.get("/hq/goip/en/index.php", inbox.index),
        web.get("/hq/goip/en/receive.php", inbox.receive),
    ) as base:
        yield inbox, f"{base}/hq/"


@pytest.fixture
async def client(server: tuple[InboxServer, str]) -> AsyncIterator[InboxClient]:
    inbox = InboxClient("hq", server[1], "goipd", SecretStr(PASSWORD), timeout=1.0)
    yield inbox
    await inbox.close()


def assert_clean(exc: UpstreamError) -> None:
    for secret in (PASSWORD, "PHPSESSID", SECRET_TEXT, "Tom & Jerry"):
        assert secret not in exc.detail and secret not in str(exc)


async def test_login_then_pages_with_the_cookie_sent_back_to_an_ip_host(
    server: tuple[InboxServer, str], client: InboxClient
) -> None:
    inbox, base = server
    assert base.startswith("http://127.0.0.1:")
    page = await client.page(1)
    assert [row.inbox_id for row in page.rows] == [31, 30, 29]
    assert page.rows[1].text == "  two\r\nlines\n  kept  "
    await client.page(1)
    assert inbox.logins == 1
    (session,) = inbox.sessions
    assert inbox.cookies_seen == [f"PHPSESSID={session}"] * 2
    assert inbox.index_hits == 0  # dologin's redirect was not followed


async def test_pages_past_the_first(server: tuple[InboxServer, str], client: InboxClient) -> None:
    inbox, _ = server
    inbox.rows = [Sms(200 - i, "2024-03-03 08:00:00", "1", "G1", f"m{i}") for i in range(65)]
    pages = [await client.page(n) for n in (1, 2, 3, 9)]
    assert [(p.page, p.pages, len(p.rows)) for p in pages] == [
        (1, 3, 30),
        (2, 3, 30),
        (3, 3, 5),
        (3, 3, 5),
    ]
    assert [q["page"] for q in inbox.queries] == ["1", "2", "3", "9"]


async def test_search_time_lists_one_second(
    server: tuple[InboxServer, str], client: InboxClient
) -> None:
    inbox, _ = server
    page = await client.search_time("2024-05-02 10:15:07")
    assert [row.inbox_id for row in page.rows] == [31, 30]
    assert inbox.queries == [
        {
            "action": "search",
            "column": "time",
            "type": "equal",
            "s_key": "2024-05-02 10:15:07",
            "page": "1",
        }
    ]
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        await client.search_time("2024-05-02 10:15:07' or '1'='1")
    with pytest.raises(ValueError, match="from 1"):
        await client.page(0)


async def test_an_expired_session_logs_in_once_more(
    server: tuple[InboxServer, str], client: InboxClient
) -> None:
    inbox, _ = server
    await client.page(1)
    inbox.sessions.clear()  # the server's session_time ran out
    page = await client.page(1)
    assert page.total == 3 and inbox.logins == 2
    assert len(inbox.queries) == 3


async def test_login_form_right_after_a_login_is_inbox_login(
    server: tuple[InboxServer, str], client: InboxClient
) -> None:
    inbox, _ = server
    inbox.mode = "login_ignored"
    with pytest.raises(UpstreamError) as caught:
        await client.page(1)
    assert caught.value.reason is ErrorReason.INBOX_LOGIN
    assert "login form right after a login" in caught.value.detail
    assert (inbox.logins, len(inbox.queries)) == (1, 1)
    assert_clean(caught.value)
    # With a session kept from before, one new login and one retry, no more.
    inbox.mode = "inbox"
    await client.page(1)
    inbox.mode = "login_ignored"
    inbox.sessions.clear()
    with pytest.raises(UpstreamError) as caught:
        await client.page(1)
    assert caught.value.reason is ErrorReason.INBOX_LOGIN
    assert (inbox.logins, len(inbox.queries)) == (3, 4)


@pytest.mark.parametrize("password", ["wrong-pw", f"{PASSWORD}'", "'''"])
async def test_a_refused_login_is_inbox_login(
    server: tuple[InboxServer, str], password: str
) -> None:
    inbox, base = server
    inbox.password = PASSWORD + "x" if "'" in password else PASSWORD
    client = InboxClient("hq", base, "goipd", SecretStr(password), timeout=1.0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.page(1)
    finally:
        await client.close()
    assert caught.value.reason is ErrorReason.INBOX_LOGIN
    assert "a password holding ' can never log in" in caught.value.detail
    assert password not in caught.value.detail
    assert inbox.queries == []


@pytest.mark.parametrize(
    ("mode", "reason", "detail"),
    [
        ("changed", ErrorReason.INBOX_LAYOUT, "inbox page 1: no header row"),
        ("bad_query", ErrorReason.SERVER_DATABASE, "database refused the request"),
        ("http_500", ErrorReason.HTTP_STATUS, "inbox page 1: HTTP 500"),
        ("redirect", ErrorReason.HTTP_STATUS, "inbox page 1: HTTP 302"),
        ("slow", ErrorReason.TIMEOUT, "no reply within 1s"),
    ],
)
async def test_page_failures_map_to_reasons(
    server: tuple[InboxServer, str],
    client: InboxClient,
    mode: str,
    reason: ErrorReason,
    detail: str,
) -> None:
    inbox, _ = server
    inbox.rows[0] = replace(inbox.rows[0], msg=SECRET_TEXT)
    await client.page(1)
    inbox.mode = mode
    with pytest.raises(UpstreamError) as caught:
        await client.page(1)
    assert caught.value.reason is reason
    assert detail in caught.value.detail
    assert_clean(caught.value)
    assert inbox.index_hits == 0


async def test_a_big_page_in_many_chunks_is_read_whole(
    server: tuple[InboxServer, str], client: InboxClient
) -> None:
    inbox, _ = server
    inbox.mode = "chunked"
    inbox.rows = [
        Sms(50 - i, "2024-03-03 08:00:00", "1", "G1", f"{i}:" + "x" * 20_000) for i in range(30)
    ]
    page = await client.page(1)
    assert len(page.rows) == 30 and page.rows[-1].text == "29:" + "x" * 20_000


async def test_a_page_over_the_limit_is_refused(server: tuple[InboxServer, str]) -> None:
    inbox, base = server
    inbox.rows = [Sms(9, "2024-03-03 08:00:00", "1", "G1", "y" * 50_000)]
    client = InboxClient(
        "hq", base, "goipd", SecretStr(PASSWORD), timeout=1.0, max_page_bytes=40_000
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.page(1)
    finally:
        await client.close()
    assert caught.value.reason is ErrorReason.PARSE
    assert "larger than 40000 bytes" in caught.value.detail
    assert MAX_PAGE_BYTES == 2 * 1024 * 1024


async def test_nothing_listening_is_connect() -> None:
    client = InboxClient("hq", refused_url(), "goipd", SecretStr(PASSWORD), timeout=1.0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.page(1)
    finally:
        await client.close()
    assert caught.value.reason is ErrorReason.CONNECT
    assert caught.value.detail.startswith("inbox login: ")
