"""The baseline server: `python -m bench.baseline [--port N]`.

Bare aiohttp handlers for the two endpoints the accept and push scenarios load: they read and
parse the same JSON goipd parses and answer as goipd does (202 / 200 with a small JSON body),
but validate nothing, store nothing and log nothing. goipd's throughput is reported as a
ratio of this one, measured in the same run on the same pinned core.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal

from aiohttp import web

from goipd.netutil import bound_port

_ids = itertools.count(1)


async def post_message(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    message_id = f"{next(_ids):026d}"
    return web.json_response(
        {"id": message_id, "recipients": [{"to": n, "state": "queued"} for n in body["to"]]},
        status=202,
        headers={"Location": f"/api/v1/messages/{message_id}"},
    )


async def push_status(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_post("/hooks/goip/{server}/status", push_status)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
