"""The PostgreSQL ledger outlives its connections: a terminated writer backend, a batch whose
connection dies under it, and a database that is unreachable for a while (a restart or a
failover, played by a loopback TCP proxy that cuts and refuses connections). Writes that could
not be committed fail with LedgerError, the next ones reconnect, /readyz follows. Real
PostgreSQL on 127.0.0.1:5432, one schema per test."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from goipd.app import Daemon
from goipd.ledger.postgres import ACCEPT_LANE, WRITER_NAME, PostgresLedger
from goipd.model import LedgerError, NewMessage, State
from goipd.sim.goip import RunningSimulator
from tests.helpers.checks import eventually
from tests.helpers.daemons import daemon_config, fleet_spec
from tests.helpers.ledgers import NOW, PG_URL


def new(number: str, key: str | None = None) -> NewMessage:
    return NewMessage(
        text="hello", recipients=(number,), segments=1, encoding="GSM-7", idempotency_key=key
    )


class PgProxy:
    """Loopback TCP proxy in front of PostgreSQL. `cut()` drops every connection and, until
    `resume()`, accepts new ones only to close them at once: what clients see of a server that
    restarts. `stall()` keeps connections open but drops what they carry, until `resume()`: a
    network partition that sends no reset."""

    def __init__(self) -> None:
        target = urlsplit(PG_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.refusing = False
        self.stalled = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(PG_URL)
        netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        self.refusing = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def stall(self) -> None:
        self.stalled = True

    def resume(self) -> None:
        self.refusing = self.stalled = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if self.stalled:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open.difference_update((writer, up_writer))


@pytest.fixture
async def proxy() -> AsyncIterator[PgProxy]:
    running = PgProxy()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"test_rc_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def ledger(schema: str) -> AsyncIterator[PostgresLedger]:
    store = PostgresLedger(PG_URL, schema=schema)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_URL)
    yield conn
    await conn.close()


def writer_pid(ledger: PostgresLedger) -> int:
    """The backend of the connection accepts are written on."""
    writer = ledger._writers[ACCEPT_LANE]
    assert writer is not None
    pid: int = writer.get_server_pid()
    return pid


async def terminate(admin: asyncpg.Connection, pid: int) -> None:
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def gone() -> bool:
        return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

    await eventually(gone, 5, f"backend {pid} gone")


async def test_terminated_writer_is_replaced_and_reads_recover(
    ledger: PostgresLedger, admin: asyncpg.Connection
) -> None:
    kept = (await ledger.accept(new("+886912000001"), NOW)).message
    old = writer_pid(ledger)
    assert ledger._pool is not None
    async with ledger._pool.acquire() as conn:
        reader = conn.get_server_pid()
    await terminate(admin, old)
    # A pool connection too: reads must come back without a restart as well.
    await terminate(admin, reader)
    await asyncio.sleep(0.2)  # the closed sockets reach the client
    failed = 0
    for i in range(2):
        try:
            assert (await ledger.accept(new(f"+88691210000{i}"), NOW)).created
        except LedgerError:
            failed += 1
    assert failed <= 1, "the writer was not replaced after a failed write"
    assert (await ledger.accept(new("+886912100009"), NOW)).created
    new_pid = writer_pid(ledger)
    assert new_pid != old
    name = await admin.fetchval(
        "SELECT application_name FROM pg_stat_activity WHERE pid = $1", new_pid
    )
    assert name == WRITER_NAME
    assert ledger.write_error is None
    assert await ledger.get_message(kept.id) == kept
    counts = await ledger.counts()
    assert counts[State.QUEUED] == 1 + 2 - failed + 1


async def test_connection_lost_inside_a_batch_fails_its_callers_then_reconnects(
    ledger: PostgresLedger,
) -> None:
    async def slow(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_sleep(0.3)")

    async def kill_own_backend(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    committer = ledger._acceptor  # the writer accepts go to, which runs any write as well
    first = asyncio.create_task(committer.submit(slow))
    await asyncio.sleep(0.1)  # the slow batch is running: what follows forms the next one
    doomed = [
        asyncio.create_task(ledger.accept(new(f"+8869122{i:05d}", f"k{i}"), NOW)) for i in range(3)
    ]
    killer = asyncio.create_task(committer.submit(kill_own_backend))
    doomed.append(asyncio.create_task(ledger.accept(new("+886912299999", "k9"), NOW)))
    await first
    results = await asyncio.gather(*doomed, killer, return_exceptions=True)
    assert all(isinstance(r, LedgerError) for r in results), results
    assert ledger.write_error is not None
    # The transaction never committed: retrying with the same keys stores each message once.
    again = [await ledger.accept(new(f"+8869122{i:05d}", f"k{i}"), NOW) for i in range(3)]
    assert all(r.created for r in again)
    assert ledger.write_error is None
    assert (await ledger.counts())[State.QUEUED] == 3


async def test_unreachable_database_is_retried_with_backoff(proxy: PgProxy, schema: str) -> None:
    store = PostgresLedger(proxy.url, schema=schema)
    await store.open()
    try:
        assert (await store.accept(new("+886912300000"), NOW)).created
        proxy.cut()
        started = time.monotonic()
        failures = 0
        while time.monotonic() - started < 0.4:
            with pytest.raises(LedgerError):
                await store.accept(new("+886912300001"), NOW)
            failures += 1
            await asyncio.sleep(0.01)
        assert failures > 10
        # One reconnect attempt per backoff delay, not one per write.
        assert 1 <= proxy.refused <= 2
        assert store.write_error is not None
        assert await store.check_writes() is not None
        proxy.resume()

        async def writable() -> bool:
            return await store.check_writes() is None

        await eventually(writable, 5, "writes work again")
        assert (await store.accept(new("+886912300002"), NOW)).created
        assert (await store.counts())[State.QUEUED] == 2
    finally:
        await store.close()


async def test_a_write_without_an_answer_times_out_and_the_writer_is_replaced(
    proxy: PgProxy, schema: str
) -> None:
    store = PostgresLedger(proxy.url, schema=schema, write_timeout=0.5)
    await store.open()
    try:
        assert (await store.accept(new("+886912400000"), NOW)).created
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(LedgerError, match=r"did not finish a write within 0\.5s"):
            await store.accept(new("+886912400001", "k1"), NOW)
        assert time.monotonic() - started < 2.0
        assert store.write_error is not None
        proxy.resume()

        async def writable() -> bool:
            return await store.check_writes() is None

        await eventually(writable, 5, "writes work again on a new connection")
        # The timed-out write never reached the server: retrying its key stores it once.
        assert (await store.accept(new("+886912400001", "k1"), NOW)).created
        assert (await store.counts())[State.QUEUED] == 2
    finally:
        await store.close()


async def test_readyz_follows_ledger_writes(
    simulator: Callable[[dict[str, Any]], Awaitable[RunningSimulator]],
    daemon_factory: Callable[..., Awaitable[Daemon]],
    http: aiohttp.ClientSession,
    proxy: PgProxy,
    schema: str,
    tmp_path: Path,
) -> None:
    sim = await simulator(fleet_spec(hq=[{"line_id": "G101"}]))
    config = daemon_config(sim, ["hq"], tmp_path)
    config["storage"] = {"url": proxy.url, "pg_schema": schema}
    daemon = await daemon_factory(config)
    base = f"http://127.0.0.1:{daemon.port}"

    async def ready() -> int:
        async with http.get(f"{base}/readyz") as resp:
            return resp.status

    async def post(number: str) -> aiohttp.ClientResponse:
        async with http.post(
            f"{base}/api/v1/messages", json={"to": [number], "text": "hi"}
        ) as resp:
            await resp.read()
            return resp

    assert await ready() == 200
    proxy.cut()
    failed = await post("+886912400001")
    assert failed.status == 503
    assert failed.content_type == "application/problem+json"
    assert await ready() == 503
    proxy.resume()

    async def ready_again() -> bool:
        return await ready() == 200

    # No write is needed for that: /readyz itself tries one.
    await eventually(ready_again, 10, "/readyz back to 200")
    assert (await post("+886912400002")).status == 202
