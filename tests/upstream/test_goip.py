"""Pure parsers of the GoIP SMS Server API, on every example of the vendor document."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goipd.upstream.errors import ParseError
from goipd.upstream.goip import (
    MBSTRING_MISSING,
    OTHER_PHP_WARNING,
    DatabaseFault,
    LineStatus,
    Reply,
    SendAccepted,
    SendRejected,
    TextParts,
    _strip_trailing_commas,
    build_sendsms,
    escape_for_sql,
    goip_refusal,
    loads_lenient,
    parse_inbound_push,
    parse_querylines,
    parse_querysms,
    parse_sendsms,
    parse_status_push,
    read_reply,
    server_parts,
    setup_problem,
)

# §4.2, verbatim, including the trailing comma before "]".
QUERYLINES_DOC = """[
  {"goip_line":"G101","online":"1","reg":"LOGOUT","remain_sms":"-1","day_remain_sms":"-1"},
  {"goip_line":"G102","online":"1","reg":"LOGIN","remain_sms":"856","day_remain_sms":"56"},
  {"goip_line":"G103","online":"1","reg":"","remain_sms":"-1","day_remain_sms":"-1"},
  {"goip_line":"G104","online":"0","reg":"","remain_sms":"-1","day_remain_sms":"-1"},
]"""

# §3.2, verbatim but for the "..." placeholder line.
QUERYSMS_DOC = """[
  {"taskID":"5689.13600000000","goip_line":"G101","send":"failed","err_code":"350"},
  {"taskID":"5689.13600000001","goip_line":"G102","send":"succeeded"},
  {"taskID":"5689.13600000002","goip_line":"null","send":"sending"},
  {"taskID":"5689.13600000003","goip_line":"null","send":"unsend"},
]"""


def test_querylines_document_example() -> None:
    assert parse_querylines(QUERYLINES_DOC.encode()) == [
        LineStatus(
            "G101",
            online=True,
            registered=False,
            reg_raw="LOGOUT",
            remain_sms=None,
            day_remain_sms=None,
        ),
        LineStatus(
            "G102", online=True, registered=True, reg_raw="LOGIN", remain_sms=856, day_remain_sms=56
        ),
        LineStatus(
            "G103", online=True, registered=False, reg_raw="", remain_sms=None, day_remain_sms=None
        ),
        LineStatus(
            "G104", online=False, registered=False, reg_raw="", remain_sms=None, day_remain_sms=None
        ),
    ]


def test_querylines_accepts_numbers_null_and_bom() -> None:
    body = '\ufeff[{"goip_line":"G1","online":1,"reg":null,"remain_sms":0,"day_remain_sms":"null"}]'
    (line,) = parse_querylines(body.encode())
    assert line == LineStatus("G1", True, False, "", 0, None)
    assert parse_querylines(b"[]") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html><body>Login</body></html>", "invalid JSON"),
        (b'[{"goip_line":"G1","online":"1"', "invalid JSON"),
        (b'{"goip_line":"G1"}', "expected a JSON array"),
        (b'["G1"]', "querylines[0]: expected an object"),
        (b'[{"online":"1"}]', "querylines[0]: missing field 'goip_line'"),
        (b'[{"goip_line":"G1","remain_sms":"lots"}]', "querylines[0]: field 'remain_sms' must be"),
        (b'[{"goip_line":"G1","remain_sms":"-5"}]', "must be -1 or a count"),
        (b'[{"goip_line":"G1"},{"goip_line":"G1"}]', "querylines[1]: line 'G1' listed twice"),
        (b'[{"goip_line":{"x":1}}]', "must be a string or number"),
        (b"\xff\xfe[]", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
    ],
)
def test_querylines_rejects_malformed(body: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_querylines(body)


def test_sendsms_document_examples() -> None:
    assert parse_sendsms(b'{"result":"ACCEPT","taskID":"5689"}') == SendAccepted("5689")
    assert parse_sendsms(b'{"result":"REJECT","reason":"none_line"}') == SendRejected(
        "none_line", "none_line"
    )
    assert parse_sendsms(b'{"result":"REJECT","reason":"none_provider"}') == SendRejected(
        "none_provider", "none_provider"
    )
    assert parse_sendsms(b'{"result":"REJECT","reason":"unknown"}') == SendRejected(
        "unknown", "unknown"
    )
    assert parse_sendsms(b'{"result":"REJECT","reason":"quota"}') == SendRejected(
        "unknown", "quota"
    )
    assert parse_sendsms(b'{"result":"ACCEPT","taskID":5689}') == SendAccepted("5689")
    with pytest.raises(ParseError, match="result must be ACCEPT or REJECT"):
        parse_sendsms(b'{"result":"OK"}')
    with pytest.raises(ParseError, match="taskID must be an integer"):
        parse_sendsms(b'{"result":"ACCEPT","taskID":"abc"}')


def test_status_push_document_examples() -> None:
    failed = parse_status_push(
        b'{"taskID":"5689.13600000000","goip_line":"G101","send":"failed","err_code":"350"}'
    )
    assert (
        failed.task_id,
        failed.number,
        failed.goip_line,
        failed.send,
        failed.err_code,
        failed.receipt,
    ) == ("5689", "13600000000", "G101", "failed", "350", False)
    ok = parse_status_push(b'{"taskID":"5689.13600000000","goip_line":"G101","send":"succeeded"}')
    assert ok.send == "succeeded" and not ok.receipt and ok.err_code is None
    receipt = parse_status_push(
        b'{"taskID":"5689.13600000000","goip_line":"G101","send":"succeeded","receipt":"1"}'
    )
    assert receipt.receipt
    # International numbers keep their "+" in the sub-task id.
    assert parse_status_push(b'{"taskID":"7.+886912345678","send":"succeeded"}').number == (
        "+886912345678"
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"taskID":"5689","send":"failed"}',
        b'{"taskID":"x.136","send":"failed"}',
        b'{"taskID":"5689.136","send":"exploded"}',
        b'{"send":"failed"}',
        b"[]",
        b"",
    ],
)
def test_status_push_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_status_push(body)


def test_querysms_document_example() -> None:
    reports = parse_querysms(QUERYSMS_DOC.encode())
    assert [(r.number, r.goip_line, r.send, r.err_code) for r in reports] == [
        ("13600000000", "G101", "failed", "350"),
        ("13600000001", "G102", "succeeded", None),
        ("13600000002", None, "sending", None),
        ("13600000003", None, "unsend", None),
    ]
    assert parse_querysms(b"[]") == []


def test_inbound_document_example() -> None:
    body = """{
  "goip_line": "G101",
  "from_number": "10086",
  "content": "尊敬的客户，本次活动已结束，感谢您的支持！【中国移动】",
  "recv_time": "2019-09-26 15:26:05"
}""".encode()
    sms = parse_inbound_push(body)
    assert sms.goip_line == "G101" and sms.from_number == "10086"
    assert sms.content.endswith("【中国移动】")
    assert sms.recv_time == datetime(2019, 9, 26, 15, 26, 5)
    odd = parse_inbound_push(
        b'{"goip_line":"G1","from_number":10086,"content":"x","recv_time":"?"}'
    )
    assert odd.recv_time is None and odd.from_number == "10086"
    with pytest.raises(ParseError, match="content"):
        parse_inbound_push(b'{"goip_line":"G1","from_number":"1","content":"' + b"a" * 5000 + b'"}')


def test_build_sendsms_goip_line_wins() -> None:
    assert build_sendsms(["136", "137"], "hi", goip_line="G101", provider="移动") == {
        "number": "136,137",
        "content": "hi",
        "goip_line": "G101",
    }
    assert build_sendsms(["136"], "hi", provider="移动")["provider"] == "移动"
    with pytest.raises(ValueError, match="1 to 9999"):
        build_sendsms([], "hi")


def test_trailing_commas_inside_strings_are_kept() -> None:
    assert loads_lenient('[{"content":"a,]b,}"},]') == [{"content": "a,]b,}"}]
    assert loads_lenient('{"a":[1,2,],}') == {"a": [1, 2]}
    assert loads_lenient('["\\\\",]') == ["\\"]


@given(st.binary(max_size=300))
def test_parsers_raise_only_parse_error_on_bytes(body: bytes) -> None:
    for parser in (
        parse_querylines,
        parse_querysms,
        parse_sendsms,
        parse_status_push,
        parse_inbound_push,
    ):
        try:
            parser(body)
        except ParseError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "goip_line",
                    "online",
                    "reg",
                    "remain_sms",
                    "day_remain_sms",
                    "taskID",
                    "send",
                    "err_code",
                    "receipt",
                    "result",
                    "reason",
                    "content",
                    "from_number",
                    "recv_time",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(json_values)
def test_parsers_raise_only_parse_error_on_json(value: object) -> None:
    import json

    body = json.dumps(value).encode()
    for parser in (
        parse_querylines,
        parse_querysms,
        parse_sendsms,
        parse_status_push,
        parse_inbound_push,
    ):
        try:
            parser(body)
        except ParseError:
            pass


def test_task_ids_are_ascii_digits_only() -> None:
    with pytest.raises(ParseError, match="taskID must be an integer"):
        parse_sendsms('{"result":"ACCEPT","taskID":"²"}'.encode())
    with pytest.raises(ParseError, match="taskID must look like"):
        parse_status_push('{"taskID":"٣.136","send":"failed"}'.encode())


@pytest.mark.parametrize("body", ["[" + "1" * 5000 + "]", "[" + "1" * 5000 + ",\n]"])
def test_huge_numbers_are_a_parse_error(body: str) -> None:
    # Python's int-size guard raises a plain ValueError: it must not escape the parser.
    with pytest.raises(ParseError, match="number too long"):
        loads_lenient(body)


# --- the regex comma stripper does what the character walk did -----------------------------------


def _strip_by_walking(text: str) -> str:
    """The character-by-character stripper the regex replaced, kept as its specification."""
    out: list[str] = []
    in_string = escaped = False
    pending_comma: int | None = None
    for char in text:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char in "]}" and pending_comma is not None:
            out[pending_comma] = ""
        if char == ",":
            pending_comma = len(out)
        elif not char.isspace():
            pending_comma = None
        if char == '"':
            in_string = True
        out.append(char)
    return "".join(out)


@pytest.mark.parametrize("backslash", ["\\", ""])
@given(data=st.data())
def test_regex_comma_stripper_equals_the_character_walk(
    backslash: str, data: st.DataObject
) -> None:
    # With and without backslashes: the stripper takes a shortcut when there are none.
    alphabet = st.sampled_from(list(',]}[{" \n\t\u3000\x85a1:' + backslash))
    text = data.draw(st.text(alphabet=alphabet, max_size=60))
    assert _strip_trailing_commas(text) == _strip_by_walking(text)


@given(st.text(max_size=40))
def test_regex_comma_stripper_equals_the_character_walk_on_any_text(text: str) -> None:
    assert _strip_trailing_commas(text) == _strip_by_walking(text)


# --- the real server, v1.28.4 (docs/real-sms-server.md) ------------------------------------------

MBSTRING_WARNING = b"Warning: need install php-mbstring module<br>"


def test_a_php_warning_before_the_json_is_read_through_and_reported() -> None:
    reply = read_reply(MBSTRING_WARNING + b'{"result":"ACCEPT","taskID":"17"}')
    assert parse_sendsms(reply.body) == SendAccepted("17")
    assert reply.diagnostics == ("Warning: need install php-mbstring module",)
    assert setup_problem(reply.diagnostics[0]) == MBSTRING_MISSING
    # PHP's own warnings, with html_errors on and off, then the JSON.
    html = (
        b"<br />\n<b>Warning</b>:  mysql_fetch_array() expects parameter 1 to be resource in "
        b"<b>/var/www/goip/querylines/index.php</b> on line <b>7</b><br />\n[]"
    )
    reply = read_reply(html)
    assert parse_querylines(reply.body) == []
    assert reply.diagnostics[0].startswith("Warning: mysql_fetch_array() expects parameter 1")
    assert setup_problem(reply.diagnostics[0]) == OTHER_PHP_WARNING
    plain = b"\nNotice: Undefined index: goip_line in /x.php on line 3\n" + MBSTRING_WARNING + b"[]"
    assert len(read_reply(plain).diagnostics) == 2
    assert read_reply(b'{"a":1}') == Reply(b'{"a":1}')


@pytest.mark.parametrize(
    "body",
    [
        b"Bad query: You have an error in your SQL syntax; check the manual that corresponds to "
        b"your MariaDB server version for the right syntax to use near 't stop','1','+88691234"
        b"5678','','','1')' at line 1(INSERT INTO message (type,msg) VALUES (100, 'don't stop'))",
        MBSTRING_WARNING + b"Bad query: Table 'goip.sends' doesn't exist(select * from sends)",
    ],
)
def test_bad_query_is_a_database_fault_and_never_repeats_the_sql(body: bytes) -> None:
    with pytest.raises(DatabaseFault) as caught:
        read_reply(body)
    message = str(caught.value)
    assert "Bad query" in message
    # The echoed SQL holds the SMS text: no part of it is kept.
    for fragment in ("don't", "stop", "INSERT", "sends", "+886"):
        assert fragment not in message


def test_could_not_connect_is_a_database_fault() -> None:
    with pytest.raises(DatabaseFault, match="cannot reach its database"):
        read_reply(b"Could not connect")


def test_v1284_replies_parse() -> None:
    assert parse_sendsms(b'{"result":"REJECT","reason":"content or number error"}') == (
        SendRejected("content_or_number", "content or number error")
    )
    # json_encode form: JSON null line, integer receipt, sendTime, \\u and \\/ escapes.
    (report,) = parse_querysms(
        b'[{"taskID":"1001.+886912345678","goip_line":null,"sendTime":"2026-12-07 10:00:00",'
        b'"send":"succeeded","receipt":1}]'
    )
    assert (report.goip_line, report.send, report.receipt) == (None, "succeeded", True)
    (line,) = parse_querylines(
        b'[{"goip_line":"G\\u6e2c\\/1","online":"1","reg":"LOGIN","remain_sms":"-1",'
        b'"day_remain_sms":"5","num":"0912345678"}]'
    )
    assert (line.line_id, line.day_remain_sms) == ("G測/1", 5)


@given(st.text())
def test_escaping_for_sql_undone_by_mysql_gives_back_the_text(text: str) -> None:
    escaped = escape_for_sql(text)
    # What MySQL does with a single-quoted literal's body, backslash escapes on.
    unescaped, index = [], 0
    while index < len(escaped):
        char = escaped[index]
        assert char != "'", "an unescaped quote would end the literal"
        if char == "\\":
            index += 1
            char = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "Z": "\x1a"}.get(
                escaped[index], escaped[index]
            )
        unescaped.append(char)
        index += 1
    assert "".join(unescaped) == text


def test_sendsms_body_is_escaped_only_when_asked() -> None:
    body = build_sendsms(["+886912345678"], "don't C:\\new", goip_line="G'1", escape=True)
    assert body == {
        "number": "+886912345678",
        "content": "don\\'t C:\\\\new",
        "goip_line": "G\\'1",
    }
    assert build_sendsms(["1"], "don't", escape=False)["content"] == "don't"


@pytest.mark.parametrize(
    ("text", "mbstring", "parts"),
    [
        ("a" * 160, True, 1),
        ("a" * 161, True, 2),
        ("a" * 306, True, 2),
        ("a" * 307, True, 3),
        ("測" * 70, True, 1),
        ("測" * 71, True, 2),
        ("測" * 134, True, 2),
        ("測" * 135, True, 3),
        # Without php-mbstring the server counts bytes: 70 CJK characters are 210 bytes.
        ("測" * 70, False, 2),
        ("a" * 161, False, 2),
    ],
)
def test_parts_follow_the_servers_own_formula(text: str, mbstring: bool, parts: int) -> None:
    assert server_parts(text, mbstring=mbstring) == parts


def test_parts_are_counted_on_the_text_as_posted() -> None:
    # 160 characters, 4 of them quotes: 164 once escaped for the SQL, so 2 parts.
    text = "'" * 4 + "a" * 156
    parts = TextParts(text)
    assert parts.for_server(escape=False, mbstring=True) == 1
    assert parts.for_server(escape=True, mbstring=True) == 2


def test_what_a_goip_hop_cannot_carry_is_named() -> None:
    assert goip_refusal("don't stop C:\\new 測試\n") is None
    emoji = goip_refusal("x😀y")
    assert emoji is not None and emoji[0] == "goip_text_unsupported" and "U+FFFF" in emoji[1]
    assert goip_refusal("測" * 1000) is None  # 3,000 bytes
    too_long = goip_refusal("測" * 1001)
    assert too_long is not None and too_long[0] == "goip_text_too_long"
