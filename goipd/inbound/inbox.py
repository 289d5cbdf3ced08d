"""Inbox recovery: every SMS Server's web inbox read like a browser does, so that no inbound SMS
is lost when its one push was (docs/real-sms-server.md#inbox-recovery).

The SMS Server pushes each inbound SMS once and never again; goipd down, restarting or
answering anything but 200 loses it there. Its web inbox (`en/receive.php`, behind a login)
still lists it. Each server's inbox is read at start (which covers goipd's own downtime) and
then every `inbox_interval`, by the instance that polls the server, once its polls reach it:

- pages newest first, down to a little before the newest time the previous complete read saw
  (the watermark, kept in the ledger), or `inbox_lookback` before the newest SMS on a first
  read (an inbox that holds years is not imported whole);
- the page orders by time in whole seconds, so SMS of the second a page ends on can swap pages
  between requests: that second is listed again by itself (the inbox's search by time);
- every row is stored unless the ledger holds it already (goipd/ledger/base.py
  `add_goip_inbound` says how a row and a push are matched), then forwarded like a pushed SMS.

Listing marks the rows read in the web inbox: goipd's reads do what an operator's would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

import structlog

from goipd.config import Server
from goipd.inbound.store import GoipSink, store_goip_inbound
from goipd.model import GoipInbound, LedgerError
from goipd.upstream.errors import UpstreamError
from goipd.upstream.goip_inbox import InboxClient, InboxPage, InboxRow

log = structlog.get_logger("goipd.inbound.inbox")
OVERLAP = timedelta(minutes=10)
"""Read back this far before the previous read's newest SMS: SMS of its last second that came
in after it, and rows stored late, are still found (the rest is already held)."""
MAX_PAGES = 1000
"""Pages (of 30 SMS) read at most per read of one server: 30,000 SMS of downtime."""
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TICK = 1.0
CONCURRENT_READS = 4


class InboxReader:
    def __init__(
        self,
        ctx: GoipSink,
        servers: Callable[[], Mapping[str, Server]],
        ready: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.servers = servers
        self.ready = ready
        """Whether this instance polls the server (goipd/fleet/ha.py), and so reads its inbox,
        and the server answered its last poll: a read of a server that is down waits for it
        (the read at start included) rather than fail."""
        self.clock = clock
        self._clients: dict[str, tuple[Server, InboxClient]] = {}
        self._next_read: dict[str, float] = {}
        self._slots = asyncio.Semaphore(CONCURRENT_READS)

    async def run(self) -> None:
        try:
            while True:
                now = self.clock()
                due = [
                    server
                    for name, server in self.servers().items()
                    if server.inbox_interval > 0
                    and self.ready(name)
                    and self._next_read.get(name, 0.0) <= now
                ]
                for server in due:
                    self._next_read[server.name] = now + server.inbox_interval
                if due:
                    await asyncio.gather(*(self._read_one(server) for server in due))
                await self._retire(self.servers())
                await asyncio.sleep(TICK)
        finally:
            await self.close()

    async def _read_one(self, server: Server) -> None:
        async with self._slots:
            await self.read(server)

    async def read(self, server: Server) -> int:
        """Read `server`'s inbox once; returns how many SMS were stored that goipd lacked. A
        failure is counted and logged, never raised: the next read tries again."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(60.0, server.timeout * 20)):
                pages, rows, recovered = await self._read(server)
        except UpstreamError as exc:
            self.ctx.metrics.inbox_reads.labels(server.name, exc.reason.value).inc()
            log.warning(
                "inbox_read_failed", server=server.name, reason=exc.reason.value, detail=exc.detail
            )
            return 0
        except TimeoutError:
            self.ctx.metrics.inbox_reads.labels(server.name, "timeout").inc()
            log.warning("inbox_read_failed", server=server.name, reason="timeout")
            return 0
        except LedgerError as exc:
            log.error("inbox_read_failed", server=server.name, reason="ledger", detail=str(exc))
            return 0
        self.ctx.metrics.inbox_reads.labels(server.name, "ok").inc()
        log.info(
            "inbox_read",
            server=server.name,
            pages=pages,
            rows=rows,
            recovered=recovered,
            seconds=round(time.monotonic() - started, 3),
        )
        return recovered

    async def _read(self, server: Server) -> tuple[int, int, int]:
        client = await self._client(server)
        watermark = await self.ctx.ledger.inbox_watermark(server.name)
        first = await client.page(1)
        if not first.rows:
            return 1, 0, 0
        newest = max(row.received for row in first.rows)
        if watermark is None:
            cutoff = _shift(newest, -timedelta(seconds=server.inbox_lookback))
        else:
            cutoff = _shift(min(watermark, newest), -OVERLAP)
        page, pages, seen, recovered = first, 1, 0, 0
        while True:
            wanted = [row for row in page.rows if row.received >= cutoff]
            oldest = min(row.received for row in page.rows) if page.rows else cutoff
            more = page.page < page.pages and oldest >= cutoff and pages < MAX_PAGES
            if more:
                # The last second of this page may go on, in another order, on the next one.
                wanted.extend(await self._whole_second(client, oldest))
            seen += len(wanted)
            recovered += await self._store(server.name, wanted)
            if not more:
                break
            pages += 1
            page = await client.page(page.page + 1)
        if pages >= MAX_PAGES:
            log.warning("inbox_read_truncated", server=server.name, pages=pages, cutoff=cutoff)
        # Complete back to the cutoff: the next read starts a little before this read's newest.
        await self.ctx.ledger.set_inbox_watermark(server.name, newest, self.clock())
        return pages, seen, recovered

    async def _whole_second(self, client: InboxClient, received: str) -> list[InboxRow]:
        rows: list[InboxRow] = []
        number = 1
        while True:
            found: InboxPage = await client.search_time(received, number)
            rows.extend(found.rows)
            if found.page >= found.pages or number >= MAX_PAGES:
                return rows
            number += 1

    async def _store(self, server: str, rows: Iterable[InboxRow]) -> int:
        stored = 0
        done: set[int] = set()
        for row in rows:
            if row.inbox_id in done:
                continue
            done.add(row.inbox_id)
            sms = GoipInbound(
                server, row.goip_line, row.from_number, row.text, row.received, row.inbox_id
            )
            _, new = await store_goip_inbound(self.ctx, sms)
            stored += new
        return stored

    async def _client(self, server: Server) -> InboxClient:
        known = self._clients.get(server.name)
        if known is not None and known[0] == server:
            return known[1]
        if known is not None:
            await known[1].close()  # the server's settings changed (a reload)
        client = InboxClient(
            server.name, server.url, server.username, server.password, server.timeout
        )
        self._clients[server.name] = (server, client)
        return client

    async def _retire(self, servers: Mapping[str, Server]) -> None:
        for name in [n for n in self._clients if n not in servers]:
            _, client = self._clients.pop(name)
            self._next_read.pop(name, None)
            await client.close()

    async def close(self) -> None:
        clients, self._clients = [c for _, c in self._clients.values()], {}
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def _shift(received: str, by: timedelta) -> str:
    """A server time moved by `by`, in the server's own format (which orders as text)."""
    try:
        return (datetime.strptime(received, TIME_FORMAT) + by).strftime(TIME_FORMAT)
    except ValueError:
        return ""  # unreadable: read everything rather than skip something
