"""What the vendor's SMS Server v1.28.4 (PHP 5 on MySQL/MariaDB) does to the values a client
posts, as pure functions: the simulator's `v1.28.4` profile is built on them.

That server puts the posted text, numbers, line and provider names into its SQL unescaped,
inside single quotes, on a connection with `sql_mode='ANSI'` (backslash escapes stay on) and
tables in MySQL's 3-byte `utf8`. So what reaches the phone is not what was posted: `C:\\new`
becomes "C:", a newline and "ew", `don't` breaks the statement (`Bad query: ...`), a text is cut
at its first emoji. Modelled here:

* `parse_literal_body`: the body of a quoted MySQL string literal, as MySQL reads it.
* `run_statement`: a statement built the way the PHP builds it, lexed the way MySQL lexes it:
  the values MySQL receives, or the `Bad query:` text the PHP prints when the statement fails.
* `stored_text`, `varchar`: what a `utf8` column keeps (non-strict mode cuts, never refuses).
* `sms_parts`: the PHP's `get_count_from_sms`, the number of SMS parts quotas are counted in.
* `php_string`, `php_empty`, `php_json_decode`, `php_json_encode`: the PHP 5 conversions the
  API goes through (`"$x"`, `!$x`, `json_decode`, `json_encode` with its default flags).
* `mysql_ci_key`, `mysql_number`: how MySQL compares a literal with a column.

Nothing here runs SQL; the statements only ever exist as text in the simulator's replies.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

SQL_ERROR_NEAR: Final = (
    "You have an error in your SQL syntax; check the manual that corresponds to your MariaDB "
    "server version for the right syntax to use near '{near}' at line {line}"
)
"""MariaDB's ER_PARSE_ERROR, the error a broken literal gets (what `mysql_error()` returns)."""
NEAR_CHARS: Final = 80
"""MariaDB prints at most this much of the query from the failing token (`near '%-.80s'`)."""
PLACEHOLDER: Final = "{}"
"""Where a template takes a value (always inside single quotes, as the PHP writes `'$x'`)."""
TEXT_COLUMN_BYTES: Final = 65_535
"""A MySQL `text` column (message.msg, message.tel) holds at most this many bytes."""

_ESCAPES: Final = {
    "0": "\0",
    "'": "'",
    '"': '"',
    "b": "\b",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "Z": "\x1a",
    "\\": "\\",
    # LIKE wildcards keep their backslash: `\%` is two characters outside LIKE, too.
    "%": "\\%",
    "_": "\\_",
}
_SPACE: Final = " \t\n\r\x0b\x0c"
"""What MySQL's lexer skips between tokens (my_isspace); not Unicode spaces."""
_TOKEN: Final = re.compile(
    r"""
    (?P<space>[ \t\n\r\x0b\x0c]+)
    | (?P<string>'(?:[^'\\]|\\.|'')*+')
    | (?P<open_string>')
    | (?P<ident>"(?:[^"]|"")*+"|`(?:[^`]|``)*+`)
    | (?P<comment>\#[^\n]*|--(?=[ \t\n\r\x0b\x0c\x00-\x1f]|\Z)[^\n]*|/\*.*?\*/)
    | (?P<open_comment>/\*)
    | (?P<end>\x00\Z)
    | (?P<word>[0-9A-Za-z_$\u0080-\U0010ffff]+)
    | (?P<char>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_NUMBER_PREFIX: Final = re.compile(r"[ \t\n\r\x0b\x0c]*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_SLOT: Final = "\ue000{}\ue001"
"""Stands for the i-th value while the template itself is lexed (private-use characters no
template holds)."""


class SqlLiteralError(ValueError):
    """The would-be literal body does not survive as one literal: a lone `'` ends it early, a
    trailing lone backslash escapes the closing quote."""


class PhpFatal(Exception):
    """PHP 5 stops the script: a JSON object (stdClass) used as a string."""


class BadQuery(Exception):
    """A statement MySQL refused: the PHP prints `Bad query: <error>(<sql>)` and exits."""

    def __init__(self, error: str, sql: str) -> None:
        super().__init__(error)
        self.error = error
        self.sql = sql

    @property
    def reply(self) -> str:
        return f"Bad query: {self.error}({self.sql})"

    def __str__(self) -> str:
        return self.reply


# --- MySQL string literals ---------------------------------------------------------------------


def parse_literal_body(body: str) -> str:
    """The string MySQL reads from `'<body>'` with backslash escapes on (no NO_BACKSLASH_ESCAPES,
    which `sql_mode='ANSI'` does not set): `\\0 \\' \\" \\b \\n \\r \\t \\Z \\\\` are their
    characters, `\\%` and `\\_` stay two characters, a backslash before anything else is dropped,
    `''` is one quote. Raises SqlLiteralError where the body would not stay one literal."""
    out: list[str] = []
    index, size = 0, len(body)
    while index < size:
        char = body[index]
        if char == "\\":
            if index + 1 == size:
                raise SqlLiteralError("a trailing backslash escapes the closing quote")
            following = body[index + 1]
            out.append(_ESCAPES.get(following, following))
            index += 2
        elif char == "'":
            if index + 1 < size and body[index + 1] == "'":
                out.append("'")
                index += 2
            else:
                raise SqlLiteralError(f"a lone quote at {index} ends the literal early")
        else:
            out.append(char)
            index += 1
    return "".join(out)


def sql_escape(text: str) -> str:
    """What a client that escapes for this server posts (`\\` → `\\\\`, `'` → `\\'`): the body
    parse_literal_body reads back as `text`."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def stored_text(value: str, limit_bytes: int = TEXT_COLUMN_BYTES) -> str:
    """What a `utf8` (3-byte) `text` column keeps in non-strict mode: everything before the first
    character beyond U+FFFF (MySQL stops at the "Incorrect string value" with a warning), at
    most `limit_bytes` of UTF-8, never half a character."""
    for index, char in enumerate(value):
        if ord(char) > 0xFFFF:
            value = value[:index]
            break
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit_bytes:
        return value
    return encoded[:limit_bytes].decode("utf-8", "ignore")


def varchar(value: str, length: int) -> str:
    """What a `utf8` `varchar(length)` column keeps in non-strict mode: cut at the first
    character beyond U+FFFF, then to `length` characters."""
    return stored_text(value)[:length]


# --- statements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    values: tuple[str, ...] = ()
    """A string token's literal bodies (adjacent literals are one string in MySQL)."""


def _lex(sql: str) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "char"
        if kind in ("space", "comment", "end"):
            continue
        text = match.group()
        if kind == "string":
            body = text[1:-1]
            if tokens and tokens[-1].kind == "string":
                # 'a' 'b' is the one string 'ab' to MySQL.
                last = tokens.pop()
                tokens.append(
                    _Token(
                        "string", sql[last.start : match.end()], last.start, (*last.values, body)
                    )
                )
                continue
            tokens.append(_Token("string", text, match.start(), (body,)))
        elif kind in ("open_string", "open_comment"):
            # Everything up to the end is an unterminated literal or comment: the parse fails here.
            tokens.append(_Token(kind, sql[match.start() :], match.start()))
            break
        else:
            tokens.append(_Token(kind, text, match.start()))
    return tokens


def _near(sql: str, start: int) -> str:
    # The error text is a C string: it stops at a NUL byte.
    return sql[start:].split("\0", 1)[0][:NEAR_CHARS]


def _syntax_error(sql: str, start: int) -> BadQuery:
    line = sql.count("\n", 0, start) + 1
    return BadQuery(SQL_ERROR_NEAR.format(near=_near(sql, start), line=line), sql)


def build_statement(template: str, values: Sequence[str]) -> str:
    """The SQL the PHP sends: each `{}` of `template` replaced by a value, verbatim."""
    pieces = template.split(PLACEHOLDER)
    if len(pieces) != len(values) + 1:
        raise ValueError(f"the template takes {len(pieces) - 1} values, got {len(values)}")
    out = [pieces[0]]
    for value, piece in zip(values, pieces[1:], strict=True):
        out.append(value)
        out.append(piece)
    return "".join(out)


def run_statement(template: str, values: Sequence[str]) -> list[str]:
    """The values MySQL receives when the PHP interpolates `values` unescaped into `template`
    (each `{}` sits inside single quotes there): each parsed as a literal, in order.

    Raises BadQuery with MariaDB's syntax error where the statement no longer has the
    template's shape: a lone quote ended a literal early, a trailing backslash swallowed the
    closing quote, a `#` commented the rest out. The error is reported at the first token that
    differs from the template's; an input that turns the statement into other valid SQL (an
    injection such as `x','y`) gets the same syntax error here, where MySQL might run it or
    answer another error ("Column count doesn't match ...").
    """
    sql = build_statement(template, values)
    slots = [_SLOT.format(index) for index in range(len(values))]
    slot_set = frozenset(slots)
    expected = _lex(build_statement(template, slots))
    actual = _lex(sql)
    parsed: list[str] = []
    for position, want in enumerate(expected):
        if position >= len(actual):
            raise _syntax_error(sql, len(sql))
        got = actual[position]
        if want.kind == "string" and want.values[0] in slot_set:
            if got.kind != "string":
                raise _syntax_error(sql, got.start)
            parsed.append("".join(parse_literal_body(body) for body in got.values))
        elif got.kind != want.kind or got.text.lower() != want.text.lower():
            raise _syntax_error(sql, got.start)
    if len(actual) > len(expected):
        raise _syntax_error(sql, actual[len(expected)].start)
    return parsed


# --- MySQL comparisons --------------------------------------------------------------------------


def mysql_ci_key(text: str) -> str:
    """A key equal for strings `utf8_general_ci` calls equal (approximately: case and accents
    ignored, trailing spaces ignored as PAD SPACE collations do). Line and user names are matched
    with it: `name='g101 '` finds line G101."""
    base = "".join(
        char for char in unicodedata.normalize("NFD", text) if not unicodedata.combining(char)
    )
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in base).rstrip(" ")


def mysql_number(text: str) -> float:
    """A string compared with an integer column, as MySQL converts it: its leading number
    (`' 1001abc'` → 1001.0), 0 when there is none."""
    match = _NUMBER_PREFIX.match(text)
    if match is None:
        return 0.0
    try:
        return float(match.group(1))
    except (ValueError, OverflowError):
        return 0.0


# --- PHP ----------------------------------------------------------------------------------------


def sms_parts(text: str, mbstring: bool = True) -> int:
    """The PHP's `get_count_from_sms` on the text as posted: with mbstring and any non-ASCII
    character (strlen != mb_strlen) 1 part up to 70 characters, then ceil(chars / 67); otherwise
    (and always without mbstring) 1 part up to 160 bytes of UTF-8, then ceil(bytes / 153)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if mbstring and size != len(text):
        chars = len(text)
        return 1 if chars <= 70 else math.ceil(chars / 67)
    return 1 if size <= 160 else math.ceil(size / 153)


def php_empty(value: Any) -> bool:
    """PHP's `!$value`: null, false, 0, 0.0, "", "0" and an empty array; a JSON object (PHP 5
    stdClass) never is."""
    if isinstance(value, dict):
        return False
    if isinstance(value, str):
        return value in ("", "0")
    return not value


def php_string(value: Any) -> str:
    """PHP 5's `"$value"` for what `json_decode` gives: true "1", false and null "", integers
    beyond 64 bits became floats, floats with precision 14, an array "Array". A JSON object
    cannot become a string: PhpFatal."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return str(value)
        return php_float(float(value))
    if isinstance(value, float):
        return php_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "Array"
    raise PhpFatal("Object of class stdClass could not be converted to string")


def php_float(value: float) -> str:
    """PHP 5's string of a float (precision=14): `100`, `0.1`, `1.0E+25`, `1.5E-7`."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    text = format(value, ".14G")
    if "E" not in text:
        return text
    mantissa, exponent = text.split("E")
    if "." not in mantissa:
        mantissa += ".0"
    power = int(exponent)
    return f"{mantissa}E{'+' if power >= 0 else '-'}{abs(power)}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def php_json_decode(raw: bytes) -> Any:
    """PHP's `json_decode(file_get_contents('php://input'))`: None for anything that is not
    UTF-8 JSON (a BOM, NaN, a lone surrogate escape and an empty body included)."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if _has_surrogate(value):
        return None
    return value


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(key) or _has_surrogate(item) for key, item in value.items())
    return False


def php_prop(value: Any, name: str) -> Any:
    """`$value->name`: None unless `value` is a JSON object holding `name`."""
    return value.get(name) if isinstance(value, dict) else None


def php_json_encode(value: Any) -> str:
    """PHP's `json_encode` with its default flags: no spaces, `/` as `\\/`, every non-ASCII
    character as a `\\u` escape of four lower-case hex digits (a surrogate pair beyond U+FFFF),
    DEL as it is."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _php_json_string(value)
    if isinstance(value, dict):
        items = (
            f"{_php_json_string(str(key))}:{php_json_encode(item)}" for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(php_json_encode(item) for item in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


_JSON_SHORT: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _php_json_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _JSON_SHORT:
            out.append(_JSON_SHORT[char])
        elif code < 0x20 or 0x80 <= code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
