"""What every simulator (the GoIP fleet, smsgo, PaaSoo, c123) does alike: the control API's
errors and JSON bodies, checks of control values, background pushes, a reset connection, and
serving an app on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

S = TypeVar("S")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimError(ValueError):
    """A control request the simulator refuses (bad field, bad value); becomes HTTP 400."""

    status: ClassVar[int] = 400
    """The HTTP status the control API answers it with."""


class Keep(Enum):
    KEEP = "keep"


KEEP: Final = Keep.KEEP
"""An argument left out: the value stays as it is (where None would remove it)."""


@dataclass
class Fault:
    mode: str = "none"
    delay: float = 30.0
    """Seconds the `timeout` and `slow` modes sit on a request before answering."""


# --- control values -----------------------------------------------------------------------------


def fault_mode(mode: str, modes: Iterable[str]) -> str:
    modes = list(modes)
    if mode not in modes:
        raise SimError(f"fault mode must be one of {modes}")
    return mode


def seconds(value: Any, what: str) -> float:
    # `not >= 0` rather than `< 0`: NaN (which Python's json reads) is refused too.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise SimError(f"{what} must be a number of seconds >= 0")
    return float(value)


def strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(item, str) for item in value
    ):
        raise SimError(f"{what} must be a list of strings")
    return list(value)


def opt_url(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise SimError(f"{what} must be an http(s) URL or null")
    return value


def url_for_log(url: str) -> str:
    # Push URLs carry goipd's hook token in their query string: never log it.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --- background pushes --------------------------------------------------------------------------


class Background:
    """A simulator's work off the request path (pushes, churn): its tasks, held here because the
    loop keeps only weak references to them, and the one ClientSession its pushes use."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def session(self, timeout: float) -> aiohttp.ClientSession:
        """The push session, made on first use with a total `timeout` per request."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        return self._session

    async def push(
        self,
        method: str,
        url: str | URL,
        *,
        session_timeout: float,
        attempts: int,
        backoff: float,
        **request: Any,
    ) -> tuple[str, int]:
        """Push one request until it gets a 2xx, at most `attempts` times, waiting `backoff`,
        2 × `backoff`, ... in between: ("ok", the try that worked) or (the last failure, e.g.
        "http_503" or "error:ClientConnectorError", attempts)."""
        outcome = "not_tried"
        for attempt in range(1, attempts + 1):
            try:
                async with self.session(session_timeout).request(method, url, **request) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return "ok", attempt
                    outcome = f"http_{resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"error:{type(exc).__name__}"
            if attempt < attempts:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
        return outcome, attempts

    async def close(self) -> None:
        """Cancel what still runs, then close the session."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- HTTP ---------------------------------------------------------------------------------------


def abort(request: web.Request, *, rst: bool = True) -> None:
    """Drop the client's connection without an answer: a TCP RST ("connection reset by peer"),
    or with `rst=False` a plain close."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        # SO_LINGER 0 makes close() send a TCP RST: "connection reset by peer" for the client.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def fault_response(
    request: web.Request,
    fault: Fault,
    *,
    html_page: str | bytes,
    error_500: str = "500 Internal Server Error",
) -> web.Response | None:
    """The fault modes every simulated API has, before the API itself: `reset` (TCP RST) and
    `down` (a plain close) drop the connection, `slow` and `timeout` wait `fault.delay` seconds,
    `http_500` and `html` (`html_page`; bytes go as they are, without a charset) answer an error
    page. None: the API answers."""
    mode = fault.mode
    if mode in ("reset", "down"):
        abort(request, rst=mode == "reset")
        # Nothing reaches the client: aiohttp's write to the dead transport fails quietly.
        raise web.HTTPServiceUnavailable()
    if mode in ("slow", "timeout"):
        await asyncio.sleep(fault.delay)
    if mode == "http_500":
        return web.Response(status=500, text=error_500, content_type="text/html")
    if mode == "html":
        if isinstance(html_page, bytes):
            return web.Response(body=html_page, content_type="text/html")
        return web.Response(text=html_page, content_type="text/html")
    return None


def control_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns the model's exceptions into JSON errors, for /_control/ only: LookupError (no such
    server, message, ...) is 404, a SimError its `status`."""
    if not request.path.startswith("/_control/"):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        response = await handler(request)
    except LookupError as exc:
        return control_error(404, str(exc).strip("'\""))
    except SimError as exc:
        return control_error(exc.status, str(exc))
    return response


async def json_body(
    request: web.Request, allowed: Iterable[str] | None = None, *, kind: str = ""
) -> dict[str, Any]:
    """A control request's JSON object (none: {}); with `allowed`, other keys are refused as
    "unknown `kind` fields"."""
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise SimError("body must be JSON") from None
    if not isinstance(body, dict):
        raise SimError("body must be a JSON object")
    if allowed is not None:
        unknown = set(body) - set(allowed)
        if unknown:
            label = f"unknown {kind} fields" if kind else "unknown fields"
            raise SimError(f"{label}: {', '.join(sorted(unknown))}")
    return body


# --- running one --------------------------------------------------------------------------------


def http_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


@dataclass
class RunningSim(Generic[S]):
    """A simulator serving on loopback; `url` is what goipd's provider `url` is set to."""

    sim: S
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(
    app: web.Application, host: str, port: int, *, backlog: int = 128
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: any free port): its runner and the port it got."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)


async def until_stop_signal() -> None:
    """Returns on SIGINT or SIGTERM: a simulator run from the command line serves until then."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signums = (signal.SIGINT, signal.SIGTERM)
    for signum in signums:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)
