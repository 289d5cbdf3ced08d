"""PaaSoo international SMS: pure parsers, status tables, async client; how goipd reads its
document: docs/cloud-providers.md#paasoo-document-rulings.

The document has two operations, and this module covers both:

- send: `GET {url}/json?key=..&secret=..&to=<cc><number>,..&text=..` (≤ 50 numbers, text UTF-8),
  answering `{"status":"0","messageid":".."}` or `{"status_code":"..","status":"401"}`;
- the delivery report (DLR) PaaSoo pushes as a GET to the URL set in its console:
  `?type=dlr&messageid=..&to=..&status=..&statuscode=..&errcode=..&network=..`.

It has no status query, no balance and no cancel call, so `status()` returns [], `balance()`
None and `cancel()` False without asking anything; delivery statuses arrive only by the DLR
push (`parse_report`, wired to goipd's hook by the daemon).

One `messageid` covers every number of a send call (the document's example sends to two
numbers and gets one id back), and each DLR names its number in `to`: every recipient of a call
therefore gets the call's messageid as its upstream id, and a DLR is matched by the pair
(messageid, to).

Quirk: the document's failure reply is not JSON — `{"status_code":"illegal
secret.,"status":"401"}` has its closing quote after the comma. `parse_send_reply` reads such
bodies field by field when strict JSON fails.

PaaSoo sends when asked; it has no scheduling parameter. `send(send_at=...)` therefore sends
immediately: goipd keeps scheduled messages in its ledger until they are due.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus, urlencode

import structlog
from pydantic import SecretStr
from yarl import URL

from goipd.config import PaasooSettings
from goipd.model import State
from goipd.upstream.cloud import CloudSendResult, CloudStatus, Verdict
from goipd.upstream.errors import ErrorReason, ParseError, UpstreamError
from goipd.upstream.http import (
    HttpClient,
    held_back,
    read_limited,
    send_failed,
    transport_errors,
)

log = structlog.get_logger("goipd.upstream.paasoo")

NAME: Final = "paasoo"
MAX_BATCH: Final = 50
"""The document: "最多 50 个" numbers per call."""
MAX_REPLY_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 64
MAX_TEXT_FIELD: Final = 200
_E164 = re.compile(r"\+([1-9][0-9]{6,14})\Z")
_MESSAGE_ID = re.compile(r"[!-~]{1,64}\Z")
_STATUS = re.compile(r"[0-9]{1,6}\Z")
_DLR_NUMBER = re.compile(r"\+?([0-9]{5,20})\Z")


# --- status tables (from the document, translated) ----------------------------------------------

SEND_STATUS: Final[Mapping[str, tuple[Verdict, str]]] = {
    "0": (Verdict.ACCEPTED, "accepted"),
    "400": (Verdict.FAILED, "bad request (e.g. wrong parameters)"),
    "401": (Verdict.DISABLE, "wrong account key or secret"),
    "403": (Verdict.DISABLE, "use restricted (e.g. insufficient balance, black/white lists)"),
    "404": (Verdict.DISABLE, "IP address not allowed for this account"),
}
"""Send reply `status` → verdict and meaning.

Judgments: 400 says the request itself is wrong, and the same request would be wrong again, so
FAILED. 401 (credentials) and 404 (IP allow-list) only an operator can fix: DISABLE. 403 covers
two different things in the document: an account without balance (DISABLE: every message would
be refused) and black/white lists, which concern this message or number (FAILED). The service
tells them apart only by its free-text `status_code`, so `classify_send` reads it; a 403 it
cannot place is treated as the account-wide case, the one that must not keep failing messages.
"""

_LIST_WORDS: Final = ("black", "white", "keyword", "黑名单", "白名单", "关键字")

DLR_STATUS: Final[Mapping[str, tuple[State, str]]] = {
    "0": (State.DELIVERED, "delivered"),
    "401": (State.FAILED, "no permission"),
    "402": (State.FAILED, "content contains an illegal (blacklisted) keyword"),
    "403": (State.FAILED, "content contains no whitelisted keyword"),
    "404": (State.FAILED, "not delivered for another reason (see the status code)"),
    "501": (State.FAILED, "other system error (ask PaaSoo support)"),
}
"""DLR `status` → recipient state and meaning (the document's 状态值 table)."""

DLR_CODES: Final[Mapping[str, str]] = {
    "unknown": "the carrier returned an unknown error",
    "absent subscriber temporary": "the number is out of coverage or switched off",
    "absent subscriber permanent": "the number does not exist",
    "call barred by user": "the recipient refuses messages",
    "anti-spam rejection": "filtered by the carrier",
    "network error": "carrier network error",
    "illegal number": "invalid number",
    "unroutable": "the carrier cannot deliver it, possibly an invalid number",
    "general error": "a carrier-specific error (PaaSoo support can investigate the number)",
}
"""DLR `statuscode` values the document lists for status 404 (keys lower-cased)."""


# --- pure parsers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendReply:
    status: str
    """"0" = accepted; otherwise the document's error status (400, 401, 403, 404)."""
    messageid: str | None
    status_code: str | None
    """PaaSoo's own description of a failure (e.g. "illegal secret.")."""


def parse_send_reply(body: bytes | str) -> SendReply:
    """The JSON reply of `/json`, including the document's broken-quote failure form."""
    text = _decode(body)
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        raise ParseError(f"send reply is not a JSON object (starts {stripped[:12]!r})")
    try:
        data: Any = json.loads(stripped)
    except (ValueError, RecursionError):
        # ValueError also covers integers too long to convert, which JSONDecodeError does not.
        data = _fields_leniently(stripped)
    if not isinstance(data, dict):
        raise ParseError(f"send reply is not a JSON object, got {type(data).__name__}")
    status = _scalar(data, "status")
    if status is None or not _STATUS.match(status):
        raise ParseError(f"send reply: status must be a number, got {_show(status)}")
    status = str(int(status))
    status_code = _scalar(data, "status_code")
    if status_code is not None:
        # The document's "illegal secret.," carries the comma that belongs outside the string.
        status_code = _printable(status_code.strip().rstrip(",").strip())[:MAX_TEXT_FIELD]
    messageid = _scalar(data, "messageid")
    if status == "0" and (messageid is None or not _MESSAGE_ID.match(messageid)):
        raise ParseError(f"send reply: accepted without a valid messageid ({_show(messageid)})")
    return SendReply(status, messageid if status == "0" else None, status_code or None)


def _fields_leniently(text: str) -> dict[str, str]:
    """Reads "key":"value" / "key":123 pairs one key at a time: with the document's misplaced
    quote, a tokenizer would get out of step, but each key is still findable on its own."""
    found: dict[str, str] = {}
    for key in ("status", "messageid", "status_code"):
        match = re.search(rf'"{key}"\s*:\s*(?:"([^"]*)"|(-?[0-9]+))', text)
        if match is not None:
            found[key] = match.group(1) if match.group(1) is not None else match.group(2)
    if "status" not in found:
        raise ParseError("send reply: invalid JSON without a readable status")
    return found


def _decode(body: bytes | str) -> str:
    if isinstance(body, str):
        return body.lstrip("\ufeff")
    if len(body) > MAX_REPLY_BYTES:
        raise ParseError(f"reply larger than {MAX_REPLY_BYTES} bytes")
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"reply is not UTF-8 (byte {exc.start})") from None


def _scalar(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ParseError(f"field {key!r} must be a string or integer, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > MAX_TEXT_FIELD:
        raise ParseError(f"field {key!r} is longer than {MAX_TEXT_FIELD} characters")
    return text


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _show(value: str | None) -> str:
    return "nothing" if value is None else repr(value[:20])


def classify_send(reply: SendReply) -> tuple[Verdict, str]:
    """Verdict and English meaning of a send reply (see SEND_STATUS for the judgments)."""
    known = SEND_STATUS.get(reply.status)
    if known is None:
        # Not in the document: most likely a service-side problem; try again later.
        verdict, meaning = Verdict.RETRY, f"status {reply.status} not in the PaaSoo document"
    else:
        verdict, meaning = known
    if reply.status == "403" and reply.status_code is not None:
        lowered = reply.status_code.lower()
        if any(word in lowered for word in _LIST_WORDS):
            verdict = Verdict.FAILED
            meaning = "refused by a black/white list"
        elif "balance" in lowered or "余额" in lowered or "credit" in lowered:
            meaning = "insufficient balance"
    if reply.status_code and verdict is not Verdict.ACCEPTED:
        meaning = f"{meaning} ({reply.status_code})"
    return verdict, meaning


_TEXT_WORDS: Final = ("text", "content", "keyword", "关键字", "内容")


def _about_the_text(meaning: str) -> bool:
    """Whether a refusal names the text: every number of the message would be refused alike,
    so splitting the call would only repeat it."""
    lowered = meaning.lower()
    return any(word in lowered for word in _TEXT_WORDS)


def parse_report(query: Mapping[str, str]) -> CloudStatus:
    """One DLR push: the query parameters of PaaSoo's GET to goipd's report URL."""
    kind = _param(query, "type", 16)
    if kind != "dlr":
        raise ParseError(f"not a delivery report: type={_show(kind)}")
    messageid = _param(query, "messageid", MAX_ID_CHARS)
    if messageid is None or not _MESSAGE_ID.match(messageid):
        raise ParseError(f"report: bad or missing messageid {_show(messageid)}")
    status = _param(query, "status", 8)
    if status is None or not _STATUS.match(status):
        raise ParseError(f"report: status must be a number, got {_show(status)}")
    status = str(int(status))
    number: str | None = None
    to = _param(query, "to", 24)
    if to:
        match = _DLR_NUMBER.match(to)
        if match is None:
            raise ParseError(f"report: 'to' is not a phone number: {_show(to)}")
        number = "+" + match.group(1)
    statuscode = _param(query, "statuscode", MAX_TEXT_FIELD) or ""
    errcode = _param(query, "errcode", 32) or ""
    state, meaning = DLR_STATUS.get(
        status, (State.FAILED, f"not delivered: status {status} not in the PaaSoo document")
    )
    if state is State.FAILED:
        detail = DLR_CODES.get(statuscode.lower())
        if detail is not None:
            meaning = f"{meaning}: {detail} [{_printable(statuscode)}]"
        elif statuscode:
            meaning = f"{meaning} [{_printable(statuscode)}]"
        if errcode:
            meaning = f"{meaning}, errcode {_printable(errcode)}"
    return CloudStatus(
        upstream_id=messageid, number=number, state=state, code=status, meaning=meaning
    )


def _param(query: Mapping[str, str], key: str, limit: int) -> str | None:
    value = query.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"report: {key} must be text")
    value = value.strip()
    if len(value) > limit:
        raise ParseError(f"report: {key} is longer than {limit} characters")
    return value


# --- request building ---------------------------------------------------------------------------


def to_paasoo_number(number: str) -> str | None:
    """E.164 `+6588888888` → PaaSoo's `<country code><number>` (`6588888888`); None if the
    number is not E.164."""
    match = _E164.match(number.strip())
    return match.group(1) if match else None


def build_send_query(key: str, secret: str, numbers: Sequence[str], text: str) -> str:
    """The query string of `/json`, form-encoded like the document's `text=Hello+world`."""
    if not 1 <= len(numbers) <= MAX_BATCH:
        raise ValueError(f"PaaSoo takes 1 to {MAX_BATCH} numbers per call")
    params = {"key": key, "secret": secret, "to": ",".join(numbers), "text": text}
    return urlencode(params, quote_via=quote_plus, safe=",")


# --- client -------------------------------------------------------------------------------------


class PaasooProvider(HttpClient):
    """The PaaSoo account of the config, as a `CloudProvider`; owns one ClientSession."""

    name = NAME
    max_batch = MAX_BATCH
    balance_clears: frozenset[str] = frozenset()
    """PaaSoo has no balance call: only a probe send re-enables it."""

    def __init__(self, settings: PaasooSettings, secret: SecretStr) -> None:
        super().__init__(settings.timeout, connection_limit=8)
        self.settings = settings
        self._secret = secret
        self._base = settings.url.rstrip("/")

    async def send(
        self, numbers: Sequence[str], text: str, *, send_at: float | None = None
    ) -> list[CloudSendResult]:
        """One result per number, in order; never raises (see the module docstring on
        send_at)."""
        results: dict[int, CloudSendResult] = {}
        valid: list[tuple[int, str, str]] = []
        for index, number in enumerate(numbers):
            national = to_paasoo_number(number)
            if national is None:
                results[index] = CloudSendResult(
                    number,
                    Verdict.FAILED,
                    code="400",
                    meaning="not an E.164 number; refused by goipd before sending",
                )
            else:
                valid.append((index, number, national))
        stop: tuple[Verdict, str, str] | None = None
        pending = deque(
            valid[start : start + MAX_BATCH] for start in range(0, len(valid), MAX_BATCH)
        )
        while pending:
            chunk = pending.popleft()
            if stop is None:
                verdict, code, meaning, upstream_id = await self._send_chunk(
                    [national for _, _, national in chunk], text
                )
                if verdict is Verdict.FAILED and len(chunk) > 1 and not _about_the_text(meaning):
                    # PaaSoo refuses a whole call for one number it will not take (a bad or
                    # blacklisted number): halves, sent again, find it without failing the
                    # others. A refused call sends nothing, so resending is safe.
                    half = len(chunk) // 2
                    pending.extendleft((chunk[half:], chunk[:half]))
                    continue
                if verdict in (Verdict.RETRY, Verdict.DISABLE):
                    # The account or the service is the problem: the rest would fare the same.
                    stop = (verdict, code, meaning)
            else:
                (verdict, code, meaning), upstream_id = held_back(stop), None
            for index, number, _ in chunk:
                if verdict is Verdict.ACCEPTED:
                    results[index] = CloudSendResult(number, verdict, upstream_id=upstream_id)
                else:
                    results[index] = CloudSendResult(number, verdict, code=code, meaning=meaning)
        return [results[index] for index in range(len(numbers))]

    async def _send_chunk(
        self, numbers: list[str], text: str
    ) -> tuple[Verdict, str, str, str | None]:
        """(verdict, code, meaning, messageid) of one `/json` call."""
        query = build_send_query(self.settings.key, self._secret.get_secret_value(), numbers, text)
        try:
            status, body = await self._get(query)
        except UpstreamError as exc:
            return (*send_failed(NAME, exc, len(numbers)), None)
        try:
            reply = parse_send_reply(body)
        except ParseError as exc:
            # A 4xx page that is not PaaSoo's JSON says more by its status than by its body.
            reason = ErrorReason.PARSE if status == 200 else ErrorReason.HTTP_STATUS
            detail = f"send: {exc}" if status == 200 else f"send: HTTP {status}"
            log.warning("provider_send_failed", provider=NAME, reason=reason.value, detail=detail)
            return Verdict.RETRY, reason.value, detail, None
        verdict, meaning = classify_send(reply)
        if verdict is Verdict.ACCEPTED:
            log.debug(
                "provider_send_accepted",
                provider=NAME,
                upstream_id=reply.messageid,
                numbers=len(numbers),
            )
            return verdict, reply.status, meaning, reply.messageid
        log.warning(
            "provider_send_refused",
            provider=NAME,
            code=reply.status,
            verdict=verdict.value,
            meaning=meaning,
            numbers=len(numbers),
        )
        return verdict, reply.status, meaning, None

    async def _get(self, query: str) -> tuple[int, bytes]:
        # The query carries the secret: no URL, and no exception text that could quote it,
        # goes into an error detail.
        url = URL(f"{self._base}/json?{query}", encoded=True)
        with transport_errors("send", self.settings.timeout):
            async with self._get_session().get(url, allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise UpstreamError(ErrorReason.HTTP_STATUS, f"send: HTTP {resp.status}")
                return resp.status, await read_limited(resp, MAX_REPLY_BYTES, "send")

    async def status(self, items: Sequence[tuple[str, str]]) -> list[CloudStatus]:
        """PaaSoo has no status query: statuses come only as DLR pushes."""
        return []

    async def balance(self) -> float | None:
        """PaaSoo's API has no balance call."""
        return None

    async def cancel(self, upstream_id: str) -> bool:
        """PaaSoo sends at once and has no cancel call."""
        return False
