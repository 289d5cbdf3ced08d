"""`python -m bench.simulator --servers N --lines-per-server M [--send-delay S] [--profile P]
[--slow K --engine-delay S]`.

goipd's own simulated fleet (goipd.sim.goip: synthetic_spec, SimFleet, build_app), served the
way `goipd simulate` serves it, plus one thing the benchmarks need and the simulator does not
keep: the time of every querylines call per server, at GET /_bench/polls. That is how the
polling scenario checks that every server was polled every interval without scraping goipd
(a scrape of 32,000 lines would cost goipd more CPU than the polling it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import defaultdict

from aiohttp import web

from goipd.runtime.logs import configure_logging
from goipd.runtime.netutil import bound_port
from goipd.sim.goip import SimFleet, build_app, synthetic_spec
from goipd.web.problems import Handler

POLLS_KEY = web.AppKey("bench_polls", dict)


@web.middleware
async def count_polls(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.endswith("/goip/querylines/"):
        server = request.path.split("/", 2)[1]
        request.app[POLLS_KEY][server].append(time.time())
    return await handler(request)


async def get_polls(request: web.Request) -> web.Response:
    return web.json_response(request.app[POLLS_KEY])


async def serve(args: argparse.Namespace) -> None:
    spec = synthetic_spec(args.servers, args.lines_per_server, args.send_delay)
    for index, server in enumerate(spec["servers"]):
        server["profile"] = args.profile
        if index < args.slow:
            # The first K servers' engines answer late: sendsms takes engine_delay to ACCEPT.
            server.update(engine="slow", engine_delay=args.engine_delay)
    fleet = SimFleet.from_spec(spec)
    app = build_app(fleet)
    app[POLLS_KEY] = defaultdict(list)
    app.middlewares.append(count_polls)
    app.router.add_get("/_bench/polls", get_polls)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    print(json.dumps({"port": bound_port(site), "servers": len(fleet.servers)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await fleet.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator")
    parser.add_argument("--servers", type=int, required=True)
    parser.add_argument("--lines-per-server", type=int, default=32)
    parser.add_argument("--send-delay", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", default="document", choices=["document", "v1.28.4"])
    parser.add_argument("--slow", type=int, default=0, help="servers whose engine is slow")
    parser.add_argument("--engine-delay", type=float, default=15.0)
    configure_logging("warning", "json")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
