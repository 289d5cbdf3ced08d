"""c123 (中国短信网): pure parsers, status-code table, async client; how goipd reads its
document: docs/cloud-providers.md#c123-document-rulings.

Operations of the document, all covered:

- send: `POST {url}/tx/` form `uid, pwd, mobile, content[, time][, mid][, encode]`, answering a
  bare status code (`100` = sent). POST takes 2000 numbers, GET only 50, so goipd posts.
- replies: `GET {url}/rx/?uid&pwd[&time=YYYY-MM-DD_HH]` → `100{&}number||text||time||gateway{&}..`,
  an empty body when there is none. The service hands each reply out once (only the `time`
  form fetches an hour again) and wants at most one fetch per 10 minutes.
- balance: `GET {url}/mm/?uid&pwd` → `100||22348`; messages sent so far: `&cmd=send`, same form.

`pwd` is the lowercase hex MD5 of the password (UTF-8), as the document requires. Every reply
is GBK (the document: 请求响应返回内容是GBK编码; `encode=utf8` changes only how the service
reads what it is sent). goipd sends its text as UTF-8 with `encode=utf8`, because GBK cannot
hold every character a message may contain.

c123 is a mainland-China service: its number examples are domestic mobiles (`13972827282`) and
landlines with their trunk 0 (`02185418874`), and it says nothing of international numbers. So
`+86` numbers are sent in that domestic form and any other number fails before a request is
made, with code 112 (c123's "wrong number") and a meaning that says goipd refused it.

The send reply is one code for the whole call and carries no message id, and c123 has no
delivery reports nor a status query: see `C123Provider.send` for the synthetic upstream ids,
and `CODES` for what each code means for the recipients of the call.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final
from urllib.parse import quote_plus, urlencode

import structlog
from pydantic import SecretStr
from yarl import URL

from goipd.config import C123Settings
from goipd.upstream.cloud import CloudInbound, CloudSendResult, CloudStatus, Verdict
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.http import (
    HttpClient,
    held_back,
    read_limited,
    send_failed,
    transport_errors,
)

log = structlog.get_logger("goipd.upstream.c123")

NAME: Final = "c123"
MAX_BATCH: Final = 2000
"""Numbers per POST (the document: GET 50, POST 2000)."""
MAX_REPLY_BYTES: Final = 1024 * 1024
MAX_SPLITS: Final = 16
"""Extra requests one send may spend isolating numbers c123 calls wrong (code 112)."""
BEIJING: Final = timezone(timedelta(hours=8), "CST")
_MOBILE = re.compile(r"\+861([3-9][0-9]{9})\Z")
_LANDLINE = re.compile(r"\+86([2-9][0-9]{8,10})\Z")
_CODE = re.compile(r"[0-9]{3}\Z")
_AMOUNT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,6})?\Z")
_ENTRY = re.compile(
    r"(?P<number>[^|]{1,32})\|\|(?P<text>.*)\|\|"
    r"(?P<time>[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}[ _T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)"
    r"\|\|(?P<gateway>[0-9]{0,32})",
    re.S,
)
_SEPARATOR: Final = "{&}"
_MAX_PIECES: Final = 8
"""A reply text holding more than 7 `{&}` of its own is taken for garbage, which also bounds
the work of re-joining pieces."""


# --- the status-code table ----------------------------------------------------------------------

CODES: Final[Mapping[str, tuple[Verdict, str]]] = {
    "100": (Verdict.ACCEPTED, "sent"),
    "101": (Verdict.DISABLE, "authentication failed (check uid and password)"),
    "102": (Verdict.DISABLE, "not enough SMS credit"),
    "103": (Verdict.RETRY, "operation failed"),
    "104": (Verdict.FAILED, "illegal characters in the content"),
    "105": (Verdict.FAILED, "content too long"),
    "106": (Verdict.RETRY, "too many numbers"),
    "107": (Verdict.RETRY, "sending too fast"),
    "108": (Verdict.FAILED, "number or content empty"),
    "109": (Verdict.DISABLE, "account frozen"),
    "110": (Verdict.RETRY, "frequent single-number sends are forbidden"),
    "111": (Verdict.RETRY, "sending suspended by the system"),
    "112": (Verdict.FAILED, "wrong number"),
    "113": (Verdict.FAILED, "wrong scheduled-time format"),
    "114": (Verdict.RETRY, "account locked, log in again after 10 minutes"),
    "115": (Verdict.RETRY, "connection failed"),
    "116": (Verdict.DISABLE, "sending through the API is forbidden"),
    "120": (Verdict.RETRY, "system upgrade in progress"),
}
"""Every send code of the document → the verdict for all recipients of the call, and the
English meaning (translated from the document's 状态码说明). The judgments:

- 100 发送成功 sent: ACCEPTED.
- 101 验证失败 authentication failed: DISABLE, credentials only an operator can fix.
- 102 短信不足 not enough credit: DISABLE, nothing goes out until the account is topped up.
- 103 操作失败 operation failed: RETRY; it says nothing against the message, and the retry
  count bounds it.
- 104 非法字符 illegal characters, 105 内容过多 content too long: FAILED, the same text would be
  refused again.
- 106 号码过多 too many numbers: RETRY. goipd stays within the document's 2000, so this is the
  account's own limit: `send` halves the call and sends each half again.
- 107 频率过快 too fast, 110 禁止频繁单条发送 frequent single-number sends forbidden: RETRY, and
  sends pause for `RATE_BACKOFF` seconds.
- 108 号码内容空 number or content empty: FAILED; goipd never sends an empty number list, so the
  text is empty.
- 109 账号冻结 account frozen: DISABLE, an operator must talk to c123.
- 111 系统暂定发送 sending suspended (暂定: a typo of 暂停, paused): RETRY, a pause at c123.
- 112 号码错误 wrong number: FAILED. A call with several numbers is halved until the wrong ones
  are alone (at most `MAX_SPLITS` extra calls; the numbers still unresolved then are RETRY), so
  only the wrong numbers fail.
- 113 定时时间格式不对 wrong scheduled-time format: FAILED; goipd's `time` is always well formed,
  and the same request would be refused again.
- 114 账号被锁,10分钟后登录 locked, log in after 10 minutes: RETRY, and sends pause 10 minutes.
- 115 连接失败 connection failed, 120 系统升级 system upgrade: RETRY, temporary and c123's side.
- 116 禁止接口发送 sending through the API forbidden: DISABLE, an account setting only c123
  changes.

A code the document does not list is RETRY. For `/rx/` and `/mm/` the document lists only 100
and 101; any other code there is an error too (`UpstreamError`).
"""

RATE_BACKOFF: Final = 30.0
LOCK_BACKOFF: Final = 600.0
COOLDOWNS: Final[Mapping[str, float]] = {
    "107": RATE_BACKOFF,
    "110": RATE_BACKOFF,
    "114": LOCK_BACKOFF,
}
"""After these codes, sends are not even tried for this long: calling again at once would be
refused the same way, and for 114 could prolong the lock."""
ACCOUNT_CODES: Final = frozenset({"101", "109", "114", "116"})
"""Codes about the account's access rather than the request: `UpstreamError(AUTH)` when an
`/rx/` or `/mm/` call gets them."""


def classify(code: str) -> tuple[Verdict, str]:
    return CODES.get(code, (Verdict.RETRY, f"code {code} not in the c123 document"))


# --- pure parsers -------------------------------------------------------------------------------


def decode(body: bytes | str) -> str:
    """Reply bytes as text. c123 answers in GBK; GB18030 decodes GBK identically and more
    besides, and a stray byte becomes U+FFFD rather than losing a whole batch of replies that
    the service will not hand out again."""
    if isinstance(body, str):
        return body
    if len(body) > MAX_REPLY_BYTES:
        raise ParseError(f"reply larger than {MAX_REPLY_BYTES} bytes")
    return body.decode("gb18030", errors="replace")


def parse_code(body: bytes | str) -> str:
    """The bare status code `/tx/` answers with (`100`)."""
    text = decode(body).strip().lstrip("\ufeff")
    if not _CODE.match(text):
        raise ParseError(f"expected a 3-digit status code, got {text[:20]!r}")
    return text


@dataclass(frozen=True, slots=True)
class CountReply:
    code: str
    value: float | None
    """The count after `||`; None when the reply is a bare error code."""


def parse_count(body: bytes | str) -> CountReply:
    """`/mm/` replies: `100||22348` (balance, or sent total with `cmd=send`), or a bare code."""
    text = decode(body).strip().lstrip("\ufeff")
    code, sep, rest = text.partition("||")
    if not _CODE.match(code):
        raise ParseError(f"expected a status code, got {text[:20]!r}")
    if not sep:
        if code == "100":
            raise ParseError("code 100 without a count")
        return CountReply(code, None)
    rest = rest.strip()
    if not _AMOUNT.match(rest):
        raise ParseError(f"expected a count after '||', got {rest[:20]!r}")
    return CountReply(code, float(rest))


@dataclass(frozen=True, slots=True)
class RxReply:
    code: str
    """"100" with replies or with none (the empty body), else the error code."""
    replies: list[CloudInbound]


def parse_rx(body: bytes | str) -> RxReply:
    """`/rx/` replies: `100{&}number||text||time||gateway{&}...`, an empty body (none), or a
    bare error code. A text may itself contain `||` or `{&}`: an entry is read as number, then
    everything up to the last `||time||gateway`."""
    text = decode(body).strip().lstrip("\ufeff")
    if not text:
        return RxReply("100", [])
    head, sep, rest = text.partition(_SEPARATOR)
    head = head.strip()
    if not _CODE.match(head):
        raise ParseError(f"expected a status code, got {head[:20]!r}")
    if not sep:
        return RxReply(head, [])
    if head != "100":
        raise ParseError(f"replies after error code {head}")
    replies: list[CloudInbound] = []
    pending: list[str] = []
    pieces = rest.split(_SEPARATOR)
    if pieces and pieces[-1].strip() == "":
        pieces.pop()  # a trailing "{&}"
    for piece in pieces:
        pending.append(piece)
        match = _ENTRY.fullmatch(_SEPARATOR.join(pending).strip("\r\n"))
        if match is not None:
            replies.append(_inbound(match))
            pending = []
        elif len(pending) >= _MAX_PIECES:
            raise ParseError(f"reply {len(replies) + 1}: not number||text||time||gateway")
    if pending:
        raise ParseError(f"reply {len(replies) + 1}: not number||text||time||gateway")
    return RxReply("100", replies)


def _inbound(match: re.Match[str]) -> CloudInbound:
    number = match["number"].strip()
    if not re.fullmatch(r"\+?[0-9]{3,20}", number):
        raise ParseError(f"reply: bad number {number[:20]!r}")
    return CloudInbound(
        from_number=from_c123_number(number),
        to_number=match["gateway"] or None,
        text=match["text"],
        upstream_time=match["time"],
    )


# --- numbers, times, credentials ----------------------------------------------------------------


def to_c123_number(number: str) -> str | None:
    """E.164 → c123's domestic form (`+8613900008888` → `13900008888`, `+862185418874` →
    `02185418874`); None for numbers outside mainland China or not well formed."""
    number = number.strip()
    mobile = _MOBILE.match(number)
    if mobile:
        return "1" + mobile.group(1)
    landline = _LANDLINE.match(number)
    if landline:
        return "0" + landline.group(1)
    return None


def from_c123_number(number: str) -> str:
    """A number as c123 shows it (domestic) → E.164 where the form is unambiguous."""
    digits = number.lstrip("+")
    if number.startswith("+"):
        return number
    if re.fullmatch(r"1[0-9]{10}", digits):
        return "+86" + digits
    if re.fullmatch(r"861[0-9]{10}", digits):
        return "+" + digits
    if digits.startswith("00") and len(digits) > 4:
        return "+" + digits[2:]
    if re.fullmatch(r"0[1-9][0-9]{8,10}", digits):
        return "+86" + digits[1:]
    return number


def beijing_minute(send_at: float) -> str:
    """`time` of a scheduled send: Beijing time `YYYY-MM-DD HH:MM`, rounded up to the minute
    so it is never earlier than asked."""
    minute = math.ceil(send_at / 60) * 60
    return datetime.fromtimestamp(minute, tz=BEIJING).strftime("%Y-%m-%d %H:%M")


def beijing_hour(at: datetime) -> str:
    """`time` of `/rx/`: the Beijing hour `YYYY-MM-DD_HH` (naive datetimes are taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(BEIJING).strftime("%Y-%m-%d_%H")


def password_md5(password: str) -> str:
    """`pwd`: the document's lowercase 32-digit MD5 of the password."""
    return hashlib.md5(password.encode("utf-8"), usedforsecurity=False).hexdigest()


def build_send_form(
    uid: str, pwd_md5: str, numbers: Sequence[str], content: str, scheduled: str | None
) -> str:
    if not 1 <= len(numbers) <= MAX_BATCH:
        raise ValueError(f"c123 takes 1 to {MAX_BATCH} numbers per POST")
    form = {"uid": uid, "pwd": pwd_md5, "mobile": ",".join(numbers), "content": content}
    if scheduled is not None:
        form["time"] = scheduled
    form["encode"] = "utf8"
    return urlencode(form, quote_via=quote_plus, safe=",")


# --- client -------------------------------------------------------------------------------------

_calls = itertools.count(1)
"""Process-wide: two providers (or a reload) never hand out the same synthetic id."""


class C123Provider(HttpClient):
    """The c123 account of the config: `CloudProvider`, `PullsInbound` and `CountsSent`."""

    name = NAME
    max_batch = MAX_BATCH
    balance_clears = frozenset({"101", "102"})
    """Authentication and credit: `/mm/` answers only with the right password."""

    def __init__(
        self,
        settings: C123Settings,
        password: SecretStr,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings.timeout, connection_limit=8)
        self.settings = settings
        self.reply_poll_interval = settings.reply_poll_interval
        self._pwd = password_md5(password.get_secret_value())
        self._base = settings.url.rstrip("/")
        self._clock = clock
        self._paused: tuple[float, str] | None = None
        """(monotonic time sends may resume, the code that paused them)."""

    # --- send ----------------------------------------------------------------------------------

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        """One result per number, in order; never raises.

        c123's reply has no message id and c123 has neither delivery reports nor a status
        query, so an accepted recipient gets a synthetic upstream id
        `c123-<unix ms of the call>-<call sequence>-<index in the call>`: unique per recipient
        (the sequence is process-wide and the time differs between processes), stable once
        recorded, and it tells operators when and in which call the recipient went out. Nothing
        ever reports on it: an accepted c123 recipient stays `sent`.

        `send_at` more than a minute ahead becomes c123's `time` (Beijing time, rounded up to
        the minute); nearer or past, the message goes now.
        """
        results: dict[int, CloudSendResult] = {}
        valid: list[tuple[int, str, str]] = []
        for index, number in enumerate(numbers):
            national = to_c123_number(number)
            if national is None:
                results[index] = CloudSendResult(
                    number,
                    Verdict.FAILED,
                    code="112",
                    meaning="wrong number: c123 sends to mainland China numbers only; "
                    "refused by goipd before sending",
                )
            else:
                valid.append((index, number, national))
        scheduled = (
            beijing_minute(send_at) if send_at is not None and send_at > time.time() + 60 else None
        )
        chunks = [valid[start : start + MAX_BATCH] for start in range(0, len(valid), MAX_BATCH)]
        splits = 0
        stop: tuple[Verdict, str, str] | None = None
        while chunks:
            chunk = chunks.pop(0)
            if stop is None:
                stop = self._pause_result()
            if stop is not None:
                verdict, code, meaning = held_back(stop)
            else:
                verdict, code, meaning = await self._submit(
                    [national for _, _, national in chunk], text, scheduled
                )
                if code in ("106", "112") and len(chunk) > 1 and splits < MAX_SPLITS:
                    # One code for the whole call: halve it to find the numbers it is about.
                    splits += 1
                    half = len(chunk) // 2
                    chunks[:0] = [chunk[:half], chunk[half:]]
                    continue
                if code == "112" and len(chunk) > 1:
                    # Out of splits: the good numbers among these deserve another try.
                    verdict = Verdict.RETRY
                if verdict in (Verdict.RETRY, Verdict.DISABLE) and code not in ("106", "112"):
                    stop = (verdict, code, meaning)
            if verdict is Verdict.ACCEPTED:
                call = f"c123-{int(time.time() * 1000)}-{next(_calls)}"
                for position, (index, number, _) in enumerate(chunk):
                    results[index] = CloudSendResult(
                        number, verdict, upstream_id=f"{call}-{position}"
                    )
            else:
                retry_after = self._pause_left() if code in COOLDOWNS else None
                for index, number, _ in chunk:
                    results[index] = CloudSendResult(
                        number, verdict, code=code, meaning=meaning, retry_after=retry_after
                    )
        return [results[index] for index in range(len(numbers))]

    def _pause_left(self) -> float | None:
        if self._paused is None:
            return None
        return max(self._paused[0] - self._clock(), 0.0)

    def _pause_result(self) -> tuple[Verdict, str, str] | None:
        if self._paused is None:
            return None
        until, code = self._paused
        left = until - self._clock()
        if left <= 0:
            self._paused = None
            return None
        return Verdict.RETRY, code, f"{classify(code)[1]}; not sending for another {left:.0f}s"

    async def _submit(
        self, numbers: list[str], text: str, scheduled: str | None
    ) -> tuple[Verdict, str, str]:
        """(verdict, code, meaning) of one `/tx/` POST; transport failures are RETRY with the
        ErrorReason as code."""
        form = build_send_form(self.settings.uid, self._pwd, numbers, text, scheduled)
        try:
            code = parse_code(await self._request("tx", post=form))
        except ParseError as exc:
            return send_failed(NAME, UpstreamError(ErrorReason.PARSE, f"tx: {exc}"), len(numbers))
        except UpstreamError as exc:
            return send_failed(NAME, exc, len(numbers))
        verdict, meaning = classify(code)
        cooldown = COOLDOWNS.get(code)
        if cooldown is not None:
            self._paused = (self._clock() + cooldown, code)
        if verdict is Verdict.ACCEPTED:
            log.debug("provider_send_accepted", provider=NAME, numbers=len(numbers))
        else:
            log.warning(
                "provider_send_refused",
                provider=NAME,
                code=code,
                verdict=verdict.value,
                meaning=meaning,
                numbers=len(numbers),
            )
        return verdict, code, meaning

    # --- replies, balance, sent total ----------------------------------------------------------

    async def fetch_inbound(self, hour: datetime | None = None) -> list[CloudInbound]:
        """Replies not handed out before (each comes once), or with `hour` every reply of that
        hour again (c123's `time=YYYY-MM-DD_HH`). The caller keeps to `reply_poll_interval`."""
        params = {"uid": self.settings.uid, "pwd": self._pwd}
        if hour is not None:
            params["time"] = beijing_hour(hour)
        body = await self._request("rx", get=params)
        try:
            reply = parse_rx(body)
        except ParseError as exc:
            raise UpstreamError(ErrorReason.PARSE, f"rx: {exc}") from None
        if reply.code != "100":
            raise _code_error("rx", reply.code)
        if reply.replies:
            log.info("provider_replies_fetched", provider=NAME, replies=len(reply.replies))
        return reply.replies

    async def balance(self) -> float | None:
        """SMS left on the account (`/mm/`)."""
        return await self._count("balance", {})

    async def sent_total(self) -> int:
        """SMS the account has sent so far (`/mm/?cmd=send`)."""
        return int(await self._count("sent total", {"cmd": "send"}))

    async def _count(self, what: str, extra: dict[str, str]) -> float:
        body = await self._request("mm", get={"uid": self.settings.uid, "pwd": self._pwd, **extra})
        try:
            reply = parse_count(body)
        except ParseError as exc:
            raise UpstreamError(ErrorReason.PARSE, f"mm ({what}): {exc}") from None
        if reply.code != "100" or reply.value is None:
            raise _code_error(f"mm ({what})", reply.code)
        return reply.value

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        """c123 has no status query (and no delivery reports)."""
        return []

    async def cancel(self, upstream_id: str) -> bool:
        """c123 has no call to cancel a scheduled send."""
        return False

    # --- HTTP ----------------------------------------------------------------------------------

    async def _request(
        self, api: str, *, get: dict[str, str] | None = None, post: str | None = None
    ) -> bytes:
        # Query and form carry the password's MD5, which is as good as the password here: no
        # URL, body or exception text goes into an error detail.
        url = f"{self._base}/{api}/"
        with transport_errors(api, self.settings.timeout):
            if post is not None:
                request = self._get_session().post(
                    url,
                    data=post.encode("ascii"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    allow_redirects=False,
                )
            else:
                query = urlencode(get or {}, quote_via=quote_plus)
                request = self._get_session().get(
                    URL(f"{url}?{query}", encoded=True), allow_redirects=False
                )
            async with request as resp:
                if resp.status != 200:
                    raise UpstreamError(ErrorReason.HTTP_STATUS, f"{api}: HTTP {resp.status}")
                return await read_limited(resp, MAX_REPLY_BYTES, api)


def _code_error(api: str, code: str) -> UpstreamError:
    meaning = classify(code)[1] if code != "100" else "no value"
    reason = ErrorReason.AUTH if code in ACCOUNT_CODES else ErrorReason.HTTP_STATUS
    return UpstreamError(reason, f"{api}: code {code} ({meaning})")
