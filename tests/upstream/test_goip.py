"""Pure parsers of the GoIP SMS Server API, on every example of the vendor document."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goipd.upstream.errors import ParseError
from goipd.upstream.goip import (
    LineStatus,
    SendAccepted,
    SendRejected,
    _strip_trailing_commas,
    build_sendsms,
    loads_lenient,
    parse_inbound_push,
    parse_querylines,
    parse_querysms,
    parse_sendsms,
    parse_status_push,
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
    assert parse_sendsms(b'{"result":"REJECT","reason":"none_line"}') == SendRejected("none_line")
    assert parse_sendsms(b'{"result":"REJECT","reason":"none_provider"}') == SendRejected(
        "none_provider"
    )
    assert parse_sendsms(b'{"result":"REJECT","reason":"unknown"}') == SendRejected("unknown")
    assert parse_sendsms(b'{"result":"REJECT","reason":"quota"}') == SendRejected("unknown")
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
