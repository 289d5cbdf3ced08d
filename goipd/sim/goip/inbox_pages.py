"""The HTML of the simulated web inbox (goipd/sim/goip/inbox.py): the login form, the error
page, and the list in v1.28.4's table layout (or the `changed` one), built like the vendor's
pages so that goipd's parser meets what a real server prints."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from goipd.sim.goip.inbox import ReceiveRow

PER_PAGE: Final = 30
"""global.php's `$perpage`."""


_HEAD: Final = (
    '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
    "<title>{title}</title>\n</head>\n<body>\n"
)
_TITLES: Final = (
    "Receive Time",
    "SMSC Number",
    "Source Number",
    "Phone book match",
    "Receive goip",
    "SMS Text",
    "Operator",
)
_ROW: Final = """<tr class="even" valign="top">
<td align="center"><input name="Id{j}" type='checkbox' class="pick" value="{id}"></td>
<td align="center">{time}</td>
<td align="center">{smscnum}</td>
<td align="center">{srcnum}</td>
<td align="center">{srcname}</td>
<td align="center">{goipname}</td>
<td style="word-break: break-all">{msg}</td>
<td align="center"><a href="send.php?type=re&reid={id}">Reply</a> \
<a href="receive.php?action=del&id={id}">Delete</a></td>
</tr>
"""


def _h(text: str) -> str:
    """PHP's htmlspecialchars with ENT_QUOTES."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(char, entity)
    return text.replace("'", "&#039;")


def login_form() -> str:
    return _HEAD.format(title="SMS Server login") + (
        '<form action="dologin.php" method="post" name="login">\n'
        '<p>Name <input type="text" name="username" size="16"></p>\n'
        '<p>Password <input type="password" name="password" size="16"></p>\n'
        '<p><input type="submit" value="Login"></p>\n</form>\n</body>\n</html>\n'
    )


def error_page(errors: list[str]) -> str:
    items = "".join(f"<br><li>{error}</li>" for error in errors)
    return _HEAD.format(title="Error Information") + (
        f'<div class="error"><b>Reasons:</b>{items}</div>\n'
        '<p><a href="javascript:history.back();">&lt;&lt; Return</a></p>\n</body>\n</html>\n'
    )


def _pager(base: str, current: int, shown: str, count: int) -> str:
    """global.php's showpage(): the text the vendor's page ends with."""
    pages = math.ceil(count / PER_PAGE)
    out = [f"<table align='center'><tr><td>Total <b>{count}</b> row(s) &nbsp;&nbsp;"]
    if current < 2:
        out.append("index backward&nbsp;")
    else:
        out.append(f"<a href='{base}page=1'>index</a>&nbsp;")
        out.append(f"<a href='{base}page={current - 1}'>backward</a>&nbsp;")
    if pages - current < 1:
        out.append("forward end")
    else:
        out.append(f"<a href='{base}page={current + 1}'>forward</a>&nbsp;")
        out.append(f"<a href='{base}page={pages}'>end</a>")
    out.append(f" &nbsp;pages:<strong><font color=red>{shown}</font>/{pages}</strong>page ")
    out.append(f" &nbsp;<b>{PER_PAGE}</b>row(s)/page &nbsp;goto:<select name='page' size='1'>")
    for number in range(1, pages + 1):
        chosen = " selected " if number == current else ""
        out.append(f"<option value='{number}'{chosen}>The{number}page</option>")
    out.append("</select></td></tr></table>")
    return "".join(out)


def table_page(
    rows: list[ReceiveRow],
    base: str,
    current: int,
    shown: str,
    count: int,
    search: tuple[str, str, str],
) -> str:
    """receive.htm's structure; `search` is (column, type, key as posted) of a search."""
    column, kind, key = search
    kinds = "".join(
        f"<option value='{name}'{' selected' if name == (kind or 'equal') else ''}>{name}</option>"
        for name in ("equal", "contain", "unequal", "prefix", "postfix")
    )
    chosen = " selected" if column in ("", "goipname") else ""
    out = [
        _HEAD.format(title="Inbox"),
        "<h3>Inbox</h3>\n",
        '<form action="receive.php?action=search" method="post">\n',
        f"Search Column <select name=\"column\"><option value='goipname'{chosen}>GoIP ID</option>"
        f'</select>\nSearch Type <select name="type">{kinds}</select>\n',
        f'Key <input type="text" name="s_key" value="{key}" size="16">\n',
        '<input type="submit" value="Search">\n</form>\n',
        '<form action="receive.php?action=del" method="post" name="myform">\n',
        '<table width="100%" border="0" cellspacing="2" cellpadding="2">\n<tr class="title">\n',
        '<td align="center"><b>choose</b></td>\n',
        *(f'<td align="center"><b>{title}</b></td>\n' for title in _TITLES),
        "</tr>\n",
    ]
    for j, row in enumerate(rows):
        out.append(_ROW.format(j=j, **{**asdict(row), "msg": _h(row.msg)}))
    out.append(f'</table>\n<input type="hidden" name="boxs" value="{len(rows)}">\n')
    out.append(f'<div align="center">{_pager(base, current, shown, count)}</div>\n')
    out.append("</form>\n</body>\n</html>\n")
    return "".join(out)


def changed_page(rows: list[ReceiveRow], current: int, count: int) -> str:
    """The inbox after a (made-up) vendor update: the same rows, no table."""
    items = "".join(
        f'<div class="sms" data-id="{row.id}">\n<div class="sms-time">{row.time}</div>\n'
        f'<div class="sms-from">{_h(row.srcnum)}</div>\n'
        f'<div class="sms-line">{_h(row.goipname)}</div>\n'
        f'<div class="sms-text">{_h(row.msg)}</div>\n</div>\n'
        for row in rows
    )
    pages = math.ceil(count / PER_PAGE)
    return _HEAD.format(title="Messages") + (
        f'<div class="inbox">\n{items}</div>\n'
        f'<div class="pages">{count} messages, page {current} of {pages}</div>\n</body>\n</html>\n'
    )
