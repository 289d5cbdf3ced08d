"""The simulator's web inbox answers as SMS Server v1.28.4's en/dologin.php and en/receive.php do.

Over real loopback HTTP: the session login and its expiry, the login form without a session,
30 rows a page newest first with the page clamped, listing marks rows read, the text
HTML-escaped, the search (and its Bad query), rows of the same second in no fixed order, the
inbound push from the stored row (a null line once the line is unknown) and a delayed push, the
faults, and a restructured page.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from goipd.sim.goip import RunningSimulator, SimServer
from tests.helpers.simulator import control, until

Start = Callable[[dict[str, Any]], Awaitable[RunningSimulator]]
BASE = datetime(2026, 12, 7, 6, 0, 0)
COOKIE = re.compile(r"PHPSESSID=([0-9a-f]{32}); expires=(.+ GMT); path=/\Z")


def spec(**server: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "name": "hq",
                "username": "root",
                "password": "pw",
                "lines": [{"line_id": "G101"}, {"line_id": "G102"}],
                **server,
            }
        ]
    }


def hq(sim: RunningSimulator) -> SimServer:
    return sim.fleet.servers["hq"]


def stamp(seconds: int) -> str:
    return (BASE + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Hook:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    at: list[float] = field(default_factory=list)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    rec = Hook()

    async def handle(request: web.Request) -> web.Response:
        rec.bodies.append(json.loads(await request.read()))
        rec.at.append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/inbound", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/inbound"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the simulator is at an IP address, whose cookies aiohttp drops by default.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def receive(sim: RunningSimulator, **body: Any) -> Any:
    return await control(
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G101", "from_number": "10086", "content": "x", **body},
    )


async def login(
    http: aiohttp.ClientSession, sim: RunningSimulator, username: str = "root", password: str = "pw"
) -> tuple[int, str, aiohttp.ClientResponse]:
    async with http.post(
        f"{sim.base_url('hq')}/goip/en/dologin.php",
        data={"username": username, "password": password},
        allow_redirects=False,
    ) as resp:
        return resp.status, await resp.text(), resp


async def page(
    http: aiohttp.ClientSession, sim: RunningSimulator, query: str = "", **form: str
) -> str:
    url = f"{sim.base_url('hq')}/goip/en/receive.php{query}"
    method = "POST" if form else "GET"
    async with http.request(method, url, data=form or None) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        return await resp.text()


def rows(html: str) -> list[dict[str, str]]:
    """Each `<tr class="even">` of the list: its checkbox's name and value, then its cells."""
    out = []
    for block in re.findall(r'<tr class="even"[^>]*>(.*?)</tr>', html, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", block, re.S)
        box = re.search(r"<input name=\"(Id\d+)\" type='checkbox'[^>]* value=\"(\d+)\">", cells[0])
        assert box is not None, block
        keys = ("time", "smscnum", "srcnum", "srcname", "goipname", "msg", "operator")
        out.append({"box": box[1], "id": box[2], **dict(zip(keys, cells[1:], strict=True))})
    return out


def ids(html: str) -> list[int]:
    return [int(row["id"]) for row in rows(html)]


def is_login_form(html: str) -> bool:
    return (
        re.search(r'<form[^>]*action="dologin.php"[^>]*method="post"', html) is not None
        and 'name="username"' in html
        and 'name="password"' in html
    )


# --- the session -------------------------------------------------------------------------------


async def test_login_right_wrong_and_empty(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    status, text, _ = await login(browser, sim, "", " \t")
    assert status == 200
    assert "<li>please input name!</li>" in text and "<li>please input password!</li>" in text
    for username, password in (("root", "nope"), ("admin", "pw")):
        status, text, _ = await login(browser, sim, username, password)
        assert status == 200
        assert "<li>The name or password error</li>" in text
        assert "please input" not in text
    assert is_login_form(await page(browser, sim))

    # The PHP trims both and drops quotes; MySQL compares the name case-insensitively.
    before = time.time()
    status, text, resp = await login(browser, sim, " RO'ot ", "p'w\n")
    assert (status, text, resp.headers["Location"]) == (302, "", "index.php")
    cookie = COOKIE.match(resp.headers.getall("Set-Cookie")[-1])
    assert cookie is not None
    expires = calendar.timegm(time.strptime(cookie[2], "%a, %d-%b-%Y %H:%M:%S GMT"))
    assert abs(expires - (before + 24 * 60)) < 5  # goipinit.sql's session_time: 24 minutes
    html = await page(browser, sim)
    assert not is_login_form(html) and "<title>Inbox</title>" in html


async def test_without_a_session_the_login_form(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    await receive(sim)
    url = f"{sim.base_url('hq')}/goip/en/receive.php"
    async with browser.get(url) as resp:
        assert resp.status == 200
        html = await resp.text()
        # session_start() hands out an id before anyone logged in: the login keeps it.
        assert re.fullmatch(r"PHPSESSID=[0-9a-f]{32}; path=/", resp.headers["Set-Cookie"])
    assert is_login_form(html) and rows(html) == []
    async with browser.get(url, headers={"Cookie": "PHPSESSID=made-up"}) as resp:
        assert is_login_form(await resp.text()) and "Set-Cookie" not in resp.headers
    assert hq(sim).inbox.rows[0].status == 0  # nothing was listed


async def test_a_session_ends_session_time_minutes_after_login(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec(session_time=2))
    await receive(sim)
    shift = 0.0
    hq(sim).inbox.clock = lambda: time.time() + shift
    assert (await login(browser, sim))[0] == 302
    shift = 119.0
    assert ids(await page(browser, sim)) == [1]
    shift = 121.0
    assert is_login_form(await page(browser, sim))
    assert (await login(browser, sim))[0] == 302  # a new login, a new two minutes
    assert ids(await page(browser, sim)) == [1]


# --- the list ----------------------------------------------------------------------------------


async def test_45_rows_are_two_pages_newest_first(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    for second in range(45):
        await receive(sim, recv_time=stamp(second * 60), content=f"n{second}")
    await login(browser, sim)
    first = await page(browser, sim)
    assert ids(first) == list(range(45, 15, -1))
    assert [row["box"] for row in rows(first)] == [f"Id{j}" for j in range(30)]
    assert rows(first)[0] == {
        "box": "Id0",
        "id": "45",
        "time": stamp(44 * 60),
        "smscnum": "",
        "srcnum": "10086",
        "srcname": "",
        "goipname": "G101",
        "msg": "n44",
        "operator": '<a href="send.php?type=re&reid=45">Reply</a> '
        '<a href="receive.php?action=del&id=45">Delete</a>',
    }
    titles = re.findall(r"<td[^>]*><b>([^<]+)</b></td>", first)
    assert titles[1:] == [
        "Receive Time",
        "SMSC Number",
        "Source Number",
        "Phone book match",
        "Receive goip",
        "SMS Text",
        "Operator",
    ]
    assert "Total <b>45</b> row(s)" in first
    assert "pages:<strong><font color=red>1</font>/2</strong>page" in first
    assert "index backward&nbsp;" in first
    assert "<a href='receive.php?action=&column=&type=&s_key=&page=2'>forward</a>" in first

    second = await page(browser, sim, "?page=2")
    assert ids(second) == list(range(15, 0, -1))
    assert "pages:<strong><font color=red>2</font>/2</strong>page" in second
    assert "forward end" in second
    # Past the last page: the last one; below 1 or no number: the first.
    assert ids(await page(browser, sim, "?page=9")) == ids(second)
    assert "<font color=red>2</font>/2" in await page(browser, sim, "?page=9")
    for query in ("?page=0", "?page=-3", "?page=x", "?page="):
        html = await page(browser, sim, query)
        assert ids(html) == ids(first) and "<font color=red>1</font>/2" in html


async def test_listing_marks_the_listed_rows_read(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    for second in range(35):
        await receive(sim, recv_time=stamp(second))
    await login(browser, sim)

    async def unread() -> list[int]:
        listed = await control(sim, "GET", "servers/hq/inbox")
        assert set(listed[0]) >= {"id", "srcnum", "msg", "time", "goipname", "status"}
        return [row["id"] for row in listed if row["status"] == 0]

    assert await unread() == list(range(1, 36))
    await page(browser, sim)
    assert await unread() == [1, 2, 3, 4, 5]
    await page(browser, sim, "?page=2")
    assert await unread() == []


async def test_the_text_is_html_escaped_the_other_cells_are_not(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    await receive(sim, content='<b>it\'s "x" & y</b>', from_number="<i>1</i>")
    await login(browser, sim)
    [row] = rows(await page(browser, sim))
    assert row["msg"] == "&lt;b&gt;it&#039;s &quot;x&quot; &amp; y&lt;/b&gt;"
    assert row["srcnum"] == "<i>1</i>"


async def test_search(simulator: Start, browser: aiohttp.ClientSession) -> None:
    sim = await simulator(spec())
    await receive(sim, recv_time="2026-12-07 06:10:00", content="Your code is 1234")
    await receive(sim, recv_time="2026-12-07 06:10:00", content="hello", goip_line="G102")
    await receive(sim, recv_time="2026-12-07 06:11:00", content="CODE 99")
    await login(browser, sim)
    query = "?action=search&column=time&type=equal&s_key=2026-12-07 06:10:00&page=1"
    html = await page(browser, sim, query)
    assert sorted(ids(html)) == [1, 2]
    assert "Total <b>2</b> row(s)" in html
    assert 'name="s_key" value="2026-12-07 06:10:00"' in html
    # The search form posts; MySQL's LIKE ignores case.
    html = await page(browser, sim, "?action=search", column="msg", type="contain", s_key="code")
    assert sorted(ids(html)) == [1, 3]
    html = await page(browser, sim, "?action=search", column="goipname", s_key="g102", type="equal")
    assert ids(html) == [2]
    html = await page(browser, sim, "?action=search", column="id", type="unequal", s_key="2")
    assert ids(html) == [3, 1]
    assert ids(await page(browser, sim, "?action=search&column=msg&type=prefix&s_key=y")) == [1]


async def test_an_unknown_column_is_a_bad_query(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    await receive(sim)
    await login(browser, sim)
    text = await page(browser, sim, "?action=search&column=nope&type=equal&s_key=it's")
    assert text == (
        "Bad query: Unknown column 'nope' in 'where clause'"
        "(SELECT count(*) AS count FROM receive  where 1 and `nope`='it\\'s')"
    )
    assert hq(sim).inbox.rows[0].status == 0


async def test_rows_of_one_second_come_in_any_order_unless_stable(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec())
    await receive(sim, recv_time=stamp(0))
    for _ in range(6):
        await receive(sim, recv_time=stamp(5))
    await receive(sim, recv_time=stamp(9))
    await login(browser, sim)
    orders = []
    for _ in range(20):
        listed = ids(await page(browser, sim))
        assert (listed[0], listed[-1], sorted(listed[1:-1])) == (8, 1, [2, 3, 4, 5, 6, 7])
        orders.append(tuple(listed))
        if len(set(orders)) > 1:
            break
    assert len(set(orders)) > 1, "same-second rows kept one order over 20 requests"

    await control(sim, "PATCH", "servers/hq", {"inbox_ties": "stable"})
    for _ in range(5):
        assert ids(await page(browser, sim)) == [8, 2, 3, 4, 5, 6, 7, 1]


async def test_the_changed_layout_has_no_table(
    simulator: Start, browser: aiohttp.ClientSession
) -> None:
    sim = await simulator(spec(inbox_layout="changed"))
    await receive(sim, content="a <b>", recv_time=stamp(1))
    await receive(sim, content="second", recv_time=stamp(2))
    await login(browser, sim)
    html = await page(browser, sim)
    assert rows(html) == [] and "<table" not in html and "<tr" not in html
    assert re.findall(r'<div class="sms" data-id="(\d+)">', html) == ["2", "1"]
    assert "a &lt;b&gt;" in html
    assert [row["status"] for row in await control(sim, "GET", "servers/hq/inbox")] == [1, 1]
    await control(sim, "PATCH", "servers/hq", {"inbox_layout": "v1.28.4"})
    assert ids(await page(browser, sim)) == [2, 1]


# --- inbound: the row and its push -------------------------------------------------------------


async def test_the_push_names_the_line_as_it_is_now(simulator: Start, hook: Hook) -> None:
    sim = await simulator(spec(inbound_push_url=hook.url))
    known = await receive(sim, recv_time=stamp(0), content="a")
    assert (known["push"], known["id"]) == ("ok", 1)
    gone = await receive(sim, goip_line="G999", content="b")
    assert (gone["push"], gone["id"], gone["report"]["goip_line"]) == ("ok", 2, None)
    assert hook.bodies == [
        {"goip_line": "G101", "from_number": "10086", "content": "a", "recv_time": stamp(0)},
        {
            "goip_line": None,
            "from_number": "10086",
            "content": "b",
            "recv_time": gone["report"]["recv_time"],
        },
    ]
    inbox = await control(sim, "GET", "servers/hq/inbox")
    assert [(row["goipid"], row["goipname"]) for row in inbox] == [(1, "G101"), (0, "G999")]

    # Deleted after receipt, before the push: the row keeps the name, the join finds none.
    late = await receive(sim, goip_line="G102", push_after=0.2)
    await control(sim, "DELETE", "servers/hq/lines/G102")
    await until(lambda: len(hook.bodies) == 3)
    assert hook.bodies[2]["goip_line"] is None
    assert (await control(sim, "GET", "servers/hq/inbox"))[late["id"] - 1]["goipname"] == "G102"
    # Added again it is a new goip row, which the old receive row does not join.
    await control(sim, "POST", "servers/hq/lines", {"line_id": "G102"}, expect=201)
    assert (await receive(sim, goip_line="G102"))["report"]["goip_line"] == "G102"
    inbox = await control(sim, "GET", "servers/hq/inbox")
    assert [row["goipid"] for row in inbox] == [1, 0, 2, 3]


async def test_push_after_delays_the_push(simulator: Start, hook: Hook) -> None:
    sim = await simulator(spec(inbound_push_url=hook.url))
    started = time.monotonic()
    # A delay well beyond the checks before it: on a loaded machine (tests run in parallel) the
    # answer may take most of its 0.4 s, and the sleep after it more than its 0.2 s.
    result = await receive(sim, content="later", push_after=1.0)
    assert time.monotonic() - started < 0.4
    assert (result["push"], result["id"], result["report"]["content"]) == ("scheduled", 1, "later")
    await asyncio.sleep(0.2)
    assert hook.bodies == []
    await until(lambda: len(hook.bodies) == 1)
    assert hook.at[0] - started >= 1.0
    assert hook.bodies[0]["content"] == "later"
    # Counted once the hook's answer is back in the simulator, a moment after the hook got it.
    await until(lambda: hq(sim).counters["push_inbound_ok"] == 1)


async def test_inbound_checks(simulator: Start) -> None:
    sim = await simulator(spec())
    for body in ({"recv_time": "yesterday"}, {"recv_time": 5}, {"push_after": -1}):
        await receive_expect(sim, body, 400)
    assert hq(sim).inbox.rows == []


async def receive_expect(sim: RunningSimulator, body: dict[str, Any], status: int) -> None:
    await control(
        sim,
        "POST",
        "servers/hq/inbound",
        {"goip_line": "G101", "from_number": "1", "content": "x", **body},
        expect=status,
    )


# --- settings and faults -----------------------------------------------------------------------


async def test_inbox_settings(simulator: Start) -> None:
    sim = await simulator(spec())
    for body in (
        {"session_time": 0},
        {"session_time": "24"},
        {"session_time": True},
        {"session_time": 1.5},
        {"inbox_ties": "random"},
        {"inbox_layout": "v2"},
    ):
        await control(sim, "PATCH", "servers/hq", body, expect=400)
    state = await control(sim, "GET", "servers/hq")
    assert (state["session_time"], state["inbox_ties"], state["inbox_layout"]) == (
        24,
        "shuffled",
        "v1.28.4",
    )
    state = await control(sim, "PATCH", "servers/hq", {"session_time": 5, "inbox_ties": "stable"})
    assert (state["session_time"], state["inbox_ties"]) == (5, "stable")


async def test_faults_reach_the_inbox(simulator: Start, browser: aiohttp.ClientSession) -> None:
    sim = await simulator(spec())
    await receive(sim)
    assert (await login(browser, sim))[0] == 302
    url = f"{sim.base_url('hq')}/goip/en/receive.php"

    await control(sim, "PUT", "servers/hq/fault", {"mode": "db_down"})
    status, text, _ = await login(browser, sim)
    assert (status, text) == (200, "Could not connect")
    assert await page(browser, sim) == "Could not connect"

    await control(sim, "PUT", "servers/hq/fault", {"mode": "http_500"})
    async with browser.get(url) as resp:
        assert resp.status == 500

    await control(sim, "PUT", "servers/hq/fault", {"mode": "down"})
    with pytest.raises(aiohttp.ClientError):
        async with browser.get(url) as resp:
            await resp.read()

    await control(sim, "PUT", "servers/hq/fault", {"mode": "timeout", "delay": 5})
    with pytest.raises(TimeoutError):
        async with browser.get(url, timeout=aiohttp.ClientTimeout(total=0.3)) as resp:
            await resp.read()

    await control(sim, "PUT", "servers/hq/fault", {"mode": "wrong_auth"})
    assert "The name or password error" in (await login(browser, sim))[1]
    assert is_login_form(await page(browser, sim))

    await control(sim, "PUT", "servers/hq/fault", {"mode": "none"})
    assert ids(await page(browser, sim)) == [1]  # the session outlived the faults
    assert hq(sim).counters["requests_receive"] >= 5
