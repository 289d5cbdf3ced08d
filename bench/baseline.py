"""The baseline server: `python -m bench.baseline [--port N] [--store PATH]`.

Bare aiohttp handlers for the two endpoints the accept and push scenarios load: they read and
parse the same JSON goipd parses and answer as goipd does (202 / 200 with a small JSON body),
but validate nothing and log nothing. goipd's throughput is reported as a ratio of this one,
measured in the same run on the same pinned core.

With `--store PATH` each request is also written durably before it is answered: the floor of
any handler that must not lose what it acknowledged. One writer thread group-commits what has
queued up into SQLite with the settings of goipd's ledger (WAL, synchronous=FULL, one
transaction and one fsync per batch): one row per message (id, number, text), one upserted row
per report (server, task id, result). Nothing else: no validation, no ids worth the name, no
flood guard, no dispatch. goipd's ratio to this floor is what goipd's own work costs on top of
storing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from goipd.runtime.netutil import bound_port

_ids = itertools.count(1)
STORE_KEY: web.AppKey[DurableStore] = web.AppKey("store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, number TEXT, text TEXT);
CREATE TABLE IF NOT EXISTS reports (
    server TEXT, task_id TEXT, result TEXT, PRIMARY KEY (server, task_id)
);
"""
_STATEMENTS = {
    "message": "INSERT INTO messages VALUES (?, ?, ?)",
    "report": "INSERT INTO reports VALUES (?, ?, ?) "
    "ON CONFLICT (server, task_id) DO UPDATE SET result = excluded.result",
}


class DurableStore:
    """Group commit with the least machinery: a queue, one thread, one executemany per kind."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[
            tuple[str, list[tuple[Any, ...]], asyncio.Future[None]] | None
        ]
        self._queue = queue.SimpleQueue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._write_loop, name="store-write", daemon=True)
        self._thread.start()

    async def write(self, kind: str, rows: list[tuple[Any, ...]]) -> None:
        future = self._loop.create_future()
        self._queue.put((kind, rows, future))
        await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _write_loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            rows: dict[str, list[tuple[Any, ...]]] = {}
            for kind, item_rows, _ in batch:
                rows.setdefault(kind, []).extend(item_rows)
            self._conn.execute("BEGIN IMMEDIATE")
            for kind, kind_rows in rows.items():
                self._conn.executemany(_STATEMENTS[kind], kind_rows)
            self._conn.execute("COMMIT")
            self._loop.call_soon_threadsafe(_resolve, [future for _, _, future in batch])


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def post_message(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    message_id = f"{next(_ids):026d}"
    store = request.app.get(STORE_KEY)
    if store is not None:
        # One row per recipient, as the ledger stores them: a bulk message costs its rows.
        await store.write(
            "message",
            [(f"{message_id}-{i}", number, body["text"]) for i, number in enumerate(body["to"])],
        )
    return web.json_response(
        {"id": message_id, "recipients": [{"to": n, "state": "queued"} for n in body["to"]]},
        status=202,
        headers={"Location": f"/api/v1/messages/{message_id}"},
    )


async def push_status(request: web.Request) -> web.Response:
    report = json.loads(await request.read())
    store = request.app.get(STORE_KEY)
    if store is not None:
        row = (request.match_info["server"], str(report["taskID"]), str(report["send"]))
        await store.write("report", [row])
    return web.json_response({"status": "ok"})


def build_app(store: DurableStore | None = None) -> web.Application:
    app = web.Application()
    if store is not None:
        app[STORE_KEY] = store
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_post("/hooks/goip/{server}/status", push_status)
    return app


async def serve(port: int, store_path: Path | None) -> None:
    store = DurableStore(store_path, asyncio.get_running_loop()) if store_path else None
    runner = web.AppRunner(build_app(store), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(json.dumps({"port": bound_port(site)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    if store is not None:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--store", type=Path, help="write every request durably (the floor)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.store))


if __name__ == "__main__":
    main()
