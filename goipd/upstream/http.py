"""What the cloud clients (smsgo, PaaSoo, c123) do alike over HTTP: one session, made on first
use, that never repeats a request on its own; replies read up to a limit; aiohttp's failures as
`UpstreamError`, and a send that got no usable answer as RETRY."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import structlog

from goipd.upstream.cloud import Verdict
from goipd.upstream.errors import REASON_CODES, ErrorReason, UpstreamError

log = structlog.get_logger("goipd.upstream.http")


class HttpClient:
    """Base of a cloud client: its one aiohttp.ClientSession, made on first use (and again after
    `close`), with a total `timeout` per request and, unless `connection_limit` is set,
    aiohttp's default connection pool."""

    def __init__(self, timeout: float, *, connection_limit: int | None = None) -> None:
        self._timeout = timeout
        self._connection_limit = connection_limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = None
            if self._connection_limit is not None:
                connector = aiohttp.TCPConnector(limit=self._connection_limit)
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout), connector=connector
            )
            # aiohttp quietly repeats a GET once when the connection breaks before the answer
            # (GET is "idempotent"). Here a GET may send SMS (smsgo, PaaSoo) or hand out replies
            # only once (c123 `/rx/`): a repeat must be a decision taken above, visible in logs,
            # not a second request nobody sees. No public switch exists; aiohttp's own test
            # client flips the same flag.
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            self._session = session
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@contextmanager
def transport_errors(what: str, timeout: float) -> Iterator[None]:
    """aiohttp's failures inside the block as UpstreamError, their detail starting `what: `.
    The exception's own text is left out: it can quote the URL, which holds credentials."""
    try:
        yield
    except TimeoutError:
        raise UpstreamError(ErrorReason.TIMEOUT, f"{what}: no reply within {timeout:g}s") from None
    except aiohttp.ClientResponseError as exc:
        raise UpstreamError(ErrorReason.HTTP_STATUS, f"{what}: HTTP {exc.status}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(ErrorReason.CONNECT, f"{what}: {type(exc).__name__}") from None


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None once it grows past `limit` bytes (the rest is not read).
    `StreamReader.read(n)` is no substitute: it returns what has arrived so far, and a body
    that comes in several TCP segments would be cut short."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The reply body; more than `limit` bytes is an UpstreamError (PARSE)."""
    body = await read_capped(resp.content, limit)
    if body is None:
        raise UpstreamError(ErrorReason.PARSE, f"{what}: reply larger than {_size(limit)}")
    return body


def _size(limit: int) -> str:
    if limit >= 1024 * 1024 and limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def send_failed(provider: str, exc: UpstreamError, numbers: int) -> tuple[Verdict, str, str]:
    """A send call without a usable answer, logged: RETRY for its numbers, with the reason as
    code and the detail as meaning."""
    log.warning(
        "provider_send_failed",
        provider=provider,
        reason=exc.reason.value,
        detail=exc.detail,
        numbers=numbers,
    )
    return Verdict.RETRY, exc.reason.value, exc.detail


NOT_SENT = "not_sent"
"""Code of the numbers a send never asked about because an earlier call of it failed."""


def held_back(stop: tuple[Verdict, str, str]) -> tuple[Verdict, str, str]:
    """(verdict, code, meaning) for the numbers of a send's later calls, which were not made
    because an earlier call ended as `stop`. A provider's own refusal (credit, a pause it asked
    for) is theirs too; a call without an answer (timeout, connection, garbled reply) is not:
    those numbers never left goipd, so they are neither a send of unknown fate nor a provider
    error of their own, and count as neither."""
    verdict, code, meaning = stop
    if code not in REASON_CODES:
        return stop
    return verdict, NOT_SENT, f"not sent: an earlier call of this send failed ({code}: {meaning})"
