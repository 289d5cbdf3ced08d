"""Forwards every stored inbound SMS to the configured webhook URLs, at least once.

The outbox rows are written in the same transaction as the inbound SMS, so an SMS acknowledged
to its SMS Server is forwarded even if goipd restarts in between. Receivers should de-duplicate
by the `id` field.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import structlog

from goipd.config import InboundSettings
from goipd.ledger.base import InboundStore
from goipd.model import LedgerError, OutboxItem
from goipd.runtime.wakeup import Wakeup

log = structlog.get_logger("goipd.inbound.forwarder")
IDLE_WAIT = 1.0
MAX_BACKOFF = 600.0


class InboundForwarder:
    def __init__(
        self,
        ledger: InboundStore,
        settings: Callable[[], InboundSettings],
        clock: Callable[[], float] = time.time,
        runs: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self.runs = runs
        """Whether this instance forwards (goipd/fleet/ha.py): one of several does, for all."""
        self._session: aiohttp.ClientSession | None = None
        self._wake = Wakeup()
        self._stopping = False

    def wake(self) -> None:
        self._wake.ring()

    async def run(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            while not self._stopping:
                if not self.runs():
                    await self._wake.sleep(IDLE_WAIT)
                    continue
                try:
                    items = await self.ledger.outbox_due(self.clock(), 50)
                except LedgerError as exc:
                    log.error("forward_paused", reason=str(exc))
                    items = []
                if items:
                    results = await asyncio.gather(
                        *(self._forward(item) for item in items), return_exceptions=True
                    )
                    for result in results:
                        if isinstance(result, BaseException) and not isinstance(
                            result, asyncio.CancelledError
                        ):
                            log.error("forward_crashed", exc_info=result)
                    if all(result is True for result in results):
                        continue
                    # A result that could not be written leaves its row due: going again at
                    # once would post the same SMS over and over while the ledger is down.
                await self._wake.sleep(IDLE_WAIT)
        finally:
            await self._session.close()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.ring()

    async def _forward(self, item: OutboxItem) -> bool:
        """Post one SMS to one URL and record how it went; False if that could not be
        recorded (the row stays due and is posted again: receivers de-duplicate by id)."""
        assert self._session is not None
        settings = self.settings()
        record = item.inbound
        payload = {
            "id": record.id,
            "source": record.source,
            "line": record.line,
            "from": record.from_number,
            "to": record.to_number,
            "text": record.content,
            "received_at": datetime.fromtimestamp(record.received_at, UTC).isoformat(),
            "upstream_time": record.upstream_time,
        }
        error: str | None = None
        try:
            async with self._session.post(
                item.url,
                json=payload,
                timeout=aiohttp.ClientTimeout(total=settings.forward_timeout),
            ) as resp:
                if resp.status >= 300:
                    error = f"HTTP {resp.status}"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = exc.__class__.__name__
        now = self.clock()
        give_up = now - record.received_at > settings.forward_give_up_after
        retry_at = None if give_up else now + min(5.0 * 2**item.attempts, MAX_BACKOFF)
        try:
            await self.ledger.outbox_result(
                item.id, done=error is None, retry_at=retry_at, error=error, now=now
            )
        except LedgerError as exc:
            log.error(
                "forward_record_failed",
                inbound_id=record.id,
                url=_safe_url(item.url),
                forwarded=error is None,
                reason=str(exc),
            )
            return False
        if error is None:
            log.info("inbound_forwarded", inbound_id=record.id, url=_safe_url(item.url))
            return True
        log.warning(
            "inbound_forward_failed",
            inbound_id=record.id,
            url=_safe_url(item.url),
            error=error,
            attempts=item.attempts + 1,
            given_up=give_up,
        )
        return True


def _safe_url(url: str) -> str:
    """Webhook URLs often carry credentials (user:password@, a token in the path as Slack's
    do, or in the query): logs name the receiving host only."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/…"


def url_secrets(url: str) -> list[str]:
    """The parts of a forward URL that must never reach a log line (for the log scrubber)."""
    parts = urlsplit(url)
    secrets = [url, parts.query]
    if parts.password:
        secrets.append(parts.password)
    if parts.path.count("/") > 1:
        secrets.append(parts.path)
    return [s for s in secrets if len(s) >= 4]
