"""c123: the document's examples through the parsers, and the client against the simulator over
loopback HTTP for every operation, status code, error form and fault mode."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from goipd.sim.c123 import RunningC123Sim, start_c123_sim
from goipd.upstream.c123 import (
    BEIJING,
    CODES,
    LOCK_BACKOFF,
    MAX_BATCH,
    RATE_BACKOFF,
    C123Provider,
    CountReply,
    RxReply,
    beijing_hour,
    beijing_minute,
    build_send_form,
    classify,
    from_c123_number,
    parse_code,
    parse_count,
    parse_rx,
    password_md5,
    to_c123_number,
)
from goipd.upstream.cloud import CloudInbound, CloudProvider, CountsSent, PullsInbound, Verdict
from goipd.upstream.errors import REASON_CODES, ErrorReason, ParseError, UpstreamError
from goipd.upstream.http import NOT_SENT
from tests.helpers.c123 import MOBILE, PASSWORD, PWD_MD5, UID, Clock, make_provider
from tests.helpers.cloud import TRANSPORT_FAULTS, refused_url

# §5's example reply (the document's text is a traditional-character transcription; the service
# speaks GBK, i.e. simplified characters).
DOC_RX = (
    "100{&}13912341234||中国短信测试回复||2008-05-27 12:10:11||1068112227282{&}"
    "15912343333||中国短信测试回复2||2008-05-27 13:11:11||106811222728200"
)
DOC_RX_PARSED = [
    CloudInbound("+8613912341234", "1068112227282", "中国短信测试回复", "2008-05-27 12:10:11"),
    CloudInbound("+8615912343333", "106811222728200", "中国短信测试回复2", "2008-05-27 13:11:11"),
]


# --- parsers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"100", b"100\r\n", " 100 ", "\ufeff100", "100".encode("gbk")])
def test_send_code_document_example(body: bytes | str) -> None:
    assert parse_code(body) == "100"


@pytest.mark.parametrize("body", [b"", b"10", b"1000", b"ok", "<html>错误</html>".encode("gbk")])
def test_send_code_rejects(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_code(body)


EXPECTED_VERDICTS = {
    "100": Verdict.ACCEPTED,
    "101": Verdict.DISABLE,
    "102": Verdict.DISABLE,
    "103": Verdict.RETRY,
    "104": Verdict.FAILED,
    "105": Verdict.FAILED,
    "106": Verdict.RETRY,
    "107": Verdict.RETRY,
    "108": Verdict.FAILED,
    "109": Verdict.DISABLE,
    "110": Verdict.RETRY,
    "111": Verdict.RETRY,
    "112": Verdict.FAILED,
    "113": Verdict.FAILED,
    "114": Verdict.RETRY,
    "115": Verdict.RETRY,
    "116": Verdict.DISABLE,
    "120": Verdict.RETRY,
}


def test_code_table_covers_the_document() -> None:
    assert {code: verdict for code, (verdict, _) in CODES.items()} == EXPECTED_VERDICTS
    assert all(meaning.isascii() and meaning for _, meaning in CODES.values())
    assert classify("119") == (Verdict.RETRY, "code 119 not in the c123 document")


def test_rx_document_example() -> None:
    assert parse_rx(DOC_RX.encode("gbk")) == RxReply("100", DOC_RX_PARSED)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", RxReply("100", [])),
        (b"\r\n", RxReply("100", [])),
        (b"100", RxReply("100", [])),
        (b"101", RxReply("101", [])),
        (DOC_RX.encode("gbk") + b"{&}", RxReply("100", DOC_RX_PARSED)),
        (
            "100{&}13912341234||a||b {&} c||2008-05-27 12:10:11||106".encode("gbk"),
            RxReply(
                "100",
                [CloudInbound("+8613912341234", "106", "a||b {&} c", "2008-05-27 12:10:11")],
            ),
        ),
        (
            "100{&}02185418874||多行\n文本||2008-05-27 12:10||".encode("gbk"),
            RxReply("100", [CloudInbound("+862185418874", None, "多行\n文本", "2008-05-27 12:10")]),
        ),
    ],
)
def test_rx_forms(body: bytes, expected: RxReply) -> None:
    assert parse_rx(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "<html>系统维护中</html>",
        "100{&}13912341234||text only",
        "100{&}13912341234||x||yesterday||106",
        "101{&}13912341234||x||2008-05-27 12:10:11||106",
        "100{&}not a number||x||2008-05-27 12:10:11||106",
        "100{&}" + "{&}".join(["13912341234||x"] * 9),
        DOC_RX[:-20],  # cut inside the second reply
    ],
)
def test_rx_rejects(body: str) -> None:
    with pytest.raises(ParseError):
        parse_rx(body.encode("gbk"))


def test_count_document_examples() -> None:
    assert parse_count(b"100||22348") == CountReply("100", 22348.0)
    assert parse_count(b"101") == CountReply("101", None)
    assert parse_count(b" 100||12.5\r\n") == CountReply("100", 12.5)


@pytest.mark.parametrize("body", [b"", b"100", b"100||", b"abc||1", b"100||many", b"100||1||2"])
def test_count_rejects(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_count(body)


def test_numbers() -> None:
    assert to_c123_number("+8613900008888") == "13900008888"
    assert to_c123_number("+862185418874") == "02185418874"
    assert to_c123_number("+86218882228") == "0218882228"
    for foreign in ("+6588888888", "+886912345678", "+8612345", "13900008888", "+86139000088889"):
        assert to_c123_number(foreign) is None
    assert from_c123_number("13912341234") == "+8613912341234"
    assert from_c123_number("8613912341234") == "+8613912341234"
    assert from_c123_number("02185418874") == "+862185418874"
    assert from_c123_number("0065888888") == "+65888888"
    assert from_c123_number("+6588888888") == "+6588888888"
    assert from_c123_number("10086") == "10086"


def test_times_are_beijing() -> None:
    at = datetime(2010, 5, 27, 12, 1, tzinfo=BEIJING).timestamp()
    assert beijing_minute(at) == "2010-05-27 12:01"
    assert beijing_minute(at + 1) == "2010-05-27 12:02"  # never earlier than asked
    assert beijing_hour(datetime(2008, 5, 27, 6, 30, tzinfo=UTC)) == "2008-05-27_14"
    assert beijing_hour(datetime(2008, 5, 27, 6, 30)) == "2008-05-27_14"


def test_password_md5_is_lowercase_hex() -> None:
    assert password_md5(PASSWORD) == PWD_MD5
    assert re.fullmatch(r"[0-9a-f]{32}", password_md5("ABC"))


def test_send_form() -> None:
    form = build_send_form(UID, PWD_MD5, ["13900008888", "0218882228"], "中 文+&", None)
    assert form == (
        f"uid={UID}&pwd={PWD_MD5}&mobile=13900008888,0218882228"
        "&content=%E4%B8%AD+%E6%96%87%2B%26&encode=utf8"
    )
    with pytest.raises(ValueError, match="2000"):
        build_send_form(UID, PWD_MD5, ["13900008888"] * (MAX_BATCH + 1), "x", None)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parsers_only_raise_parse_error(body: bytes | str) -> None:
    for parse in (parse_code, parse_rx, parse_count):
        try:
            parse(body)
        except ParseError:
            pass


_piece = st.text(alphabet="1{&}|-: 0\n中2", max_size=30)


@given(st.lists(_piece, max_size=12))
def test_rx_parser_on_separator_soup(pieces: list[str]) -> None:
    try:
        parse_rx("100{&}" + "||".join(pieces))
    except ParseError:
        pass


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
            # "{" left out: a text holding "{&}" followed by its own "||time||gateway" is
            # ambiguous by construction (the table test covers a plain "{&}" in a text).
            st.text(st.characters(codec="gbk", exclude_characters="{"), min_size=1, max_size=40),
        ),
        max_size=5,
    )
)
def test_rx_round_trip(replies: list[tuple[str, str]]) -> None:
    body = "".join(f"{{&}}{n}||{t}||2024-01-02 03:04:05||106" for n, t in replies)
    parsed = parse_rx(("100" + body).encode("gbk"))
    assert [(r.from_number, r.text, r.to_number) for r in parsed.replies] == [
        ("+86" + n, t, "106") for n, t in replies
    ]


# --- client against the simulator ---------------------------------------------------------------


@pytest.fixture
async def running() -> AsyncIterator[RunningC123Sim]:
    sim = await start_c123_sim(uid=UID, password=PASSWORD, rx_min_interval=0.0)
    yield sim
    await sim.close()


@pytest.fixture
async def provider(running: RunningC123Sim) -> AsyncIterator[C123Provider]:
    client = make_provider(running.url)
    yield client
    await client.close()


async def test_implements_the_protocols(provider: C123Provider) -> None:
    assert isinstance(provider, PullsInbound)
    assert isinstance(provider, CountsSent)
    cloud: CloudProvider = provider
    assert (cloud.name, cloud.max_batch) == ("c123", 2000)
    assert provider.reply_poll_interval == 600.0


async def test_send_accepts_with_synthetic_ids(
    running: RunningC123Sim, provider: C123Provider
) -> None:
    text = "验证码 1234，勿告诉他人 & 100% 👍"
    results = await provider.send([MOBILE, "+862185418874"], text)
    assert [(r.number, r.verdict) for r in results] == [
        (MOBILE, Verdict.ACCEPTED),
        ("+862185418874", Verdict.ACCEPTED),
    ]
    ids = [r.upstream_id or "" for r in results]
    assert all(re.fullmatch(r"c123-\d{13}-\d+-\d+", i) for i in ids)
    assert ids[0].rsplit("-", 1)[0] == ids[1].rsplit("-", 1)[0]
    again = await provider.send([MOBILE], text)
    assert again[0].upstream_id not in ids
    (call, _) = running.sim.sent
    assert call["mobiles"] == ["13900008888", "02185418874"]
    assert call["content"] == text
    assert (call["method"], call["encode"], call["time"]) == ("POST", "utf8", None)
    assert running.sim.sent_total == 3
    assert running.sim.balance == 10_000 - 3


async def test_send_at_becomes_beijing_time(
    running: RunningC123Sim, provider: C123Provider
) -> None:
    later = datetime.now(UTC).timestamp() + 3 * 3600
    await provider.send([MOBILE], "scheduled", send_at=later)
    await provider.send([MOBILE], "due already", send_at=datetime.now(UTC).timestamp() - 5)
    assert running.sim.sent[0]["time"] == beijing_minute(later)
    assert running.sim.sent[1]["time"] is None


async def test_foreign_numbers_fail_without_a_request(
    running: RunningC123Sim, provider: C123Provider
) -> None:
    results = await provider.send(["+6588888888", "+886912345678"], "hi")
    assert {(r.verdict, r.code) for r in results} == {(Verdict.FAILED, "112")}
    assert "mainland China" in (results[0].meaning or "")
    assert running.sim.counters["http_requests"] == 0
    mixed = await provider.send(["+6588888888", MOBILE], "hi")
    assert [r.verdict for r in mixed] == [Verdict.FAILED, Verdict.ACCEPTED]
    assert running.sim.sent[0]["mobiles"] == ["13900008888"]


async def test_batches_of_two_thousand(running: RunningC123Sim, provider: C123Provider) -> None:
    numbers = [f"+86139{i:08d}" for i in range(2001)]
    results = await provider.send(numbers, "bulk")
    assert [r.number for r in results] == numbers
    assert {r.verdict for r in results} == {Verdict.ACCEPTED}
    assert len({r.upstream_id for r in results}) == 2001
    assert [len(call["mobiles"]) for call in running.sim.sent] == [2000, 1]


async def test_wrong_numbers_are_isolated(running: RunningC123Sim, provider: C123Provider) -> None:
    numbers = [f"+86139{i:08d}" for i in range(8)]
    running.sim.set_account(invalid_numbers=["13900000005"])
    results = await provider.send(numbers, "hi")
    assert [r.verdict for r in results] == [Verdict.ACCEPTED] * 5 + [Verdict.FAILED] + [
        Verdict.ACCEPTED
    ] * 2
    assert results[5].code == "112"
    assert sorted(m for call in running.sim.sent for m in call["mobiles"]) == sorted(
        n[3:] for n in numbers if not n.endswith("05")
    )


@pytest.mark.parametrize("code", sorted(set(CODES) - {"100"}))
async def test_every_code(running: RunningC123Sim, provider: C123Provider, code: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.put(f"{running.url}/_control/fault", json={"mode": "code", "code": code})
        assert (await resp.json())["code"] == code
    (result,) = await provider.send([MOBILE], "hi")
    assert (result.verdict, result.code, result.meaning) == (
        EXPECTED_VERDICTS[code],
        code,
        CODES[code][1],
    )
    assert result.upstream_id is None
    assert running.sim.sent == []


async def test_wrong_password_disables(running: RunningC123Sim) -> None:
    client = make_provider(running.url, password="wrong")
    try:
        (result,) = await client.send([MOBILE], "hi")
    finally:
        await client.close()
    assert (result.verdict, result.code) == (Verdict.DISABLE, "101")
    assert running.sim.counters["tx_101"] == 1


async def test_documented_refusals(running: RunningC123Sim, provider: C123Provider) -> None:
    running.sim.set_account(balance=1)
    results = await provider.send([MOBILE, "+8613900009999"], "hi")
    assert {(r.verdict, r.code) for r in results} == {(Verdict.DISABLE, "102")}
    running.sim.set_account(balance=100, max_content_chars=10, banned_words=["赌博"])
    assert (await provider.send([MOBILE], "x" * 11))[0].code == "105"
    assert (await provider.send([MOBILE], "网上赌博"))[0].code == "104"
    (empty,) = await provider.send([MOBILE], "")
    assert (empty.verdict, empty.code) == (Verdict.FAILED, "108")
    assert running.sim.sent == []


async def test_too_fast_pauses_sending(running: RunningC123Sim) -> None:
    clock = Clock()
    client = make_provider(running.url, clock=clock)
    running.sim.set_account(min_send_interval=60.0)
    try:
        assert (await client.send([MOBILE], "1"))[0].verdict is Verdict.ACCEPTED
        (refused,) = await client.send([MOBILE], "2")
        assert (refused.verdict, refused.code) == (Verdict.RETRY, "107")
        assert refused.retry_after == RATE_BACKOFF
        assert running.sim.counters["http_requests"] == 2
        clock.now += 10
        (paused,) = await client.send([MOBILE], "3")
        assert (paused.verdict, paused.code) == (Verdict.RETRY, "107")
        assert paused.retry_after == RATE_BACKOFF - 10
        assert "not sending for another 20s" in (paused.meaning or "")
        assert running.sim.counters["http_requests"] == 2
        clock.now += RATE_BACKOFF - 10
        running.sim.set_account(min_send_interval=0.0)
        assert (await client.send([MOBILE], "4"))[0].verdict is Verdict.ACCEPTED
        assert running.sim.counters["http_requests"] == 3
    finally:
        await client.close()


async def test_single_sends_too_frequent(running: RunningC123Sim, provider: C123Provider) -> None:
    running.sim.set_account(min_single_interval=60.0)
    assert (await provider.send([MOBILE], "1"))[0].verdict is Verdict.ACCEPTED
    assert (await provider.send([MOBILE], "2"))[0].code == "110"


async def test_locked_account_pauses_ten_minutes(running: RunningC123Sim) -> None:
    clock = Clock()
    client = make_provider(running.url, clock=clock)
    try:
        running.sim.set_fault("code", code="114")
        (locked,) = await client.send([MOBILE], "1")
        assert (locked.code, locked.retry_after) == ("114", LOCK_BACKOFF)
        running.sim.set_fault("none")
        clock.now += LOCK_BACKOFF - 1
        assert (await client.send([MOBILE], "2"))[0].verdict is Verdict.RETRY
        clock.now += 1
        assert (await client.send([MOBILE], "3"))[0].verdict is Verdict.ACCEPTED
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("mode", "verdict", "code"),
    [
        ("auth", Verdict.DISABLE, "101"),
        ("no_credit", Verdict.DISABLE, "102"),
        ("too_fast", Verdict.RETRY, "107"),
        ("frozen", Verdict.DISABLE, "109"),
        ("too_frequent", Verdict.RETRY, "110"),
        ("forbidden", Verdict.DISABLE, "116"),
        *TRANSPORT_FAULTS,
    ],
)
async def test_fault_modes_on_send(
    running: RunningC123Sim, provider: C123Provider, mode: str, verdict: Verdict, code: str
) -> None:
    running.sim.set_fault(mode)
    numbers = [f"+86139{i:08d}" for i in range(2001)]
    results = await provider.send(numbers, "hi")
    # The first refusal or failure is the answer for the whole send: no second request. The
    # number of the call never made shares a refusal of the account, but not a call's lost
    # answer: it never left goipd.
    held = NOT_SENT if code in REASON_CODES else code
    assert [(r.verdict, r.code) for r in results] == [(verdict, code)] * 2000 + [(verdict, held)]
    assert all(r.meaning for r in results)
    assert running.sim.counters["http_requests"] == 1


async def test_numbers_after_a_timed_out_call_are_not_sent_not_ambiguous(
    running: RunningC123Sim,
) -> None:
    running.sim.set_fault("timeout", delay=1.0)
    client = make_provider(running.url, timeout="200ms")
    try:
        results = await client.send([f"+86139{i:08d}" for i in range(2001)], "hi")
    finally:
        await client.close()
    assert {r.code for r in results[:2000]} == {"timeout"}
    last = results[2000]
    assert (last.verdict, last.code) == (Verdict.RETRY, NOT_SENT)
    assert last.meaning == (
        "not sent: an earlier call of this send failed (timeout: tx: no reply within 0.2s)"
    )
    assert running.sim.counters["http_requests"] == 1


async def test_slow_and_timeout(running: RunningC123Sim) -> None:
    running.sim.set_fault("slow", delay=0.2)
    client = make_provider(running.url, timeout="1s")
    try:
        assert (await client.send([MOBILE], "hi"))[0].verdict is Verdict.ACCEPTED
    finally:
        await client.close()
    running.sim.set_fault("timeout", delay=1.0)
    client = make_provider(running.url, timeout="200ms")
    try:
        (result,) = await client.send([MOBILE], "hi")
        with pytest.raises(UpstreamError) as caught:
            await client.balance()
    finally:
        await client.close()
    assert (result.verdict, result.code, result.meaning) == (
        Verdict.RETRY,
        "timeout",
        "tx: no reply within 0.2s",
    )
    assert caught.value.reason is ErrorReason.TIMEOUT


async def test_connection_refused() -> None:
    client = make_provider(refused_url())
    try:
        (result,) = await client.send([MOBILE], "hi")
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_inbound()
    finally:
        await client.close()
    assert (result.verdict, result.code) == (Verdict.RETRY, "connect")
    assert caught.value.reason is ErrorReason.CONNECT


async def test_replies_are_handed_out_once(running: RunningC123Sim, provider: C123Provider) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{running.url}/_control/replies",
            json={
                "from_number": "13912341234",
                "content": "好的，收到",
                "time": "2024-03-05 09:15:00",
            },
        )
        assert resp.status == 201
    running.sim.add_reply("15912343333", "TD 退订 👍", gateway="106900001")
    replies = await provider.fetch_inbound()
    assert replies[0] == CloudInbound(
        "+8613912341234", "1068112227282", "好的，收到", "2024-03-05 09:15:00"
    )
    # GBK has no emoji: the service's reply loses it, as the real one would.
    assert (replies[1].from_number, replies[1].to_number, replies[1].text) == (
        "+8615912343333",
        "106900001",
        "TD 退订 ?",
    )
    assert await provider.fetch_inbound() == []
    again = await provider.fetch_inbound(hour=datetime(2024, 3, 5, 1, 0, tzinfo=UTC))
    assert [r.text for r in again] == ["好的，收到"]


async def test_reply_polls_too_often_are_refused(running: RunningC123Sim) -> None:
    running.sim.set_account(rx_min_interval=0.3)
    running.sim.add_reply("13912341234", "一")
    client = make_provider(running.url)
    try:
        assert len(await client.fetch_inbound()) == 1
        running.sim.add_reply("13912341234", "二")
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_inbound()
        assert caught.value.reason is ErrorReason.HTTP_STATUS
        assert caught.value.detail == "rx: code 107 (sending too fast)"
        await asyncio.sleep(0.35)
        assert [r.text for r in await client.fetch_inbound()] == ["二"]
    finally:
        await client.close()
    assert running.sim.counters["rx_too_fast"] == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("auth", ErrorReason.AUTH),
        ("frozen", ErrorReason.AUTH),
        ("forbidden", ErrorReason.AUTH),
        ("http_500", ErrorReason.HTTP_STATUS),
        ("html", ErrorReason.PARSE),
        ("reset", ErrorReason.CONNECT),
    ],
)
async def test_rx_and_mm_failures(
    running: RunningC123Sim, provider: C123Provider, mode: str, reason: ErrorReason
) -> None:
    running.sim.set_fault(mode)
    for call in (provider.fetch_inbound, provider.balance, provider.sent_total):
        with pytest.raises(UpstreamError) as caught:
            await call()
        assert caught.value.reason is reason
    # One request per call, even when the connection is reset (no silent repeat).
    assert running.sim.counters["http_requests"] == 3


async def test_truncated_counts_are_parse_errors(
    running: RunningC123Sim, provider: C123Provider
) -> None:
    running.sim.set_fault("truncated")
    with pytest.raises(UpstreamError) as caught:
        await provider.balance()
    assert caught.value.reason is ErrorReason.PARSE


async def test_wrong_password_on_rx_and_mm(running: RunningC123Sim) -> None:
    client = make_provider(running.url, password="wrong")
    try:
        for call in (client.fetch_inbound, client.balance, client.sent_total):
            with pytest.raises(UpstreamError) as caught:
                await call()
            assert caught.value.reason is ErrorReason.AUTH
            assert "code 101" in caught.value.detail
    finally:
        await client.close()


async def test_balance_and_sent_total(running: RunningC123Sim, provider: C123Provider) -> None:
    running.sim.set_account(balance=22348, sent_total=7)
    assert await provider.balance() == 22348.0
    await provider.send([MOBILE, "+8613900009999"], "hi")
    assert await provider.balance() == 22346.0
    assert await provider.sent_total() == 9
    running.sim.set_fault("no_credit")
    assert await provider.balance() == 0.0


async def test_operations_the_document_lacks(
    running: RunningC123Sim, provider: C123Provider
) -> None:
    assert await provider.status([("c123-1-1-0", MOBILE)]) == []
    assert await provider.cancel("c123-1-1-0") is False
    assert running.sim.counters["http_requests"] == 0


async def test_secrets_stay_out_of_results_errors_and_logs(running: RunningC123Sim) -> None:
    client = make_provider(running.url, password="wrong-pass")
    seen: list[object] = []
    with capture_logs() as logs:
        try:
            for mode in ("none", "http_500", "html", "reset"):
                running.sim.set_fault(mode)
                seen.extend(await client.send([MOBILE], "hi"))
                for call in (client.fetch_inbound, client.balance):
                    try:
                        await call()
                    except UpstreamError as exc:
                        seen.append(str(exc))
        finally:
            await client.close()
    shown = repr(seen) + repr(logs)
    for secret in ("wrong-pass", password_md5("wrong-pass"), PASSWORD, PWD_MD5):
        assert secret not in shown
    assert any(log["event"] == "provider_send_refused" for log in logs)
