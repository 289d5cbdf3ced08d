"""A simulated GoIP SMS Server fleet: many servers on one port, told apart by a path prefix.

Server `hq` answers at `http://HOST:PORT/hq/goip/<api>/` exactly as the vendor document shows,
quirks included (string numbers, trailing commas, `text/html`), pushes send results and inbound
SMS to configured URLs, and can be told to misbehave. Tests, the demo and benchmarks drive it
through its control API under `/_control/` (no auth: it only ever listens on loopback).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from goipd.netutil import bound_port

log = structlog.get_logger("goipd.sim")
FAULT_MODES = (
    "none",
    "timeout",
    "slow",
    "http_500",
    "html",
    "truncated_json",
    "wrong_auth",
    "reset",
    "down",
)
PUSH_ATTEMPTS = 4
HTML_PAGE = "<html><head><title>SMS Server</title></head><body>Please login</body></html>"


@dataclass
class SimLine:
    line_id: str
    online: bool = True
    reg: str = "LOGIN"
    remain_sms: int = -1
    day_remain_sms: int = -1
    provider: str = "default"
    fail_code: str | None = None
    """Every send on this line fails with this CMS error code."""
    receipt: bool = True
    """Push a delivery receipt after each successful send."""

    @property
    def usable(self) -> bool:
        return (
            self.online
            and self.reg == "LOGIN"
            and self.remain_sms != 0
            and (self.day_remain_sms != 0)
        )

    def json(self) -> dict[str, str]:
        return {
            "goip_line": self.line_id,
            "online": "1" if self.online else "0",
            "reg": self.reg,
            "remain_sms": str(self.remain_sms),
            "day_remain_sms": str(self.day_remain_sms),
        }


@dataclass
class Fault:
    mode: str = "none"
    delay: float = 30.0


@dataclass
class SubTask:
    task_id: str
    number: str
    content: str
    goip_line: str | None = None
    send: str = "unsend"
    err_code: str | None = None
    receipt: bool = False

    @property
    def sub_task_id(self) -> str:
        return f"{self.task_id}.{self.number}"

    def report(self) -> dict[str, str]:
        body = {
            "taskID": self.sub_task_id,
            "goip_line": self.goip_line or "null",
            "send": self.send,
        }
        if self.err_code:
            body["err_code"] = self.err_code
        if self.receipt:
            body["receipt"] = "1"
        return body


@dataclass
class SimServer:
    name: str
    username: str
    password: str
    lines: dict[str, SimLine] = field(default_factory=dict)
    status_push_url: str | None = None
    inbound_push_url: str | None = None
    send_delay: float = 0.05
    quirks: bool = True
    drop_reports: bool = False
    fault: Fault = field(default_factory=Fault)
    next_task: int = 1000
    tasks: dict[str, list[SubTask]] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)
    """Round-robin order of line ids: a line that sends goes to the back."""
    pushes: int = 0

    def __post_init__(self) -> None:
        self.queue = list(self.lines)

    def set_line(self, line_id: str, **changes: Any) -> SimLine:
        line = self.lines[line_id]
        for key, value in changes.items():
            if key not in SimLine.__dataclass_fields__ or key == "line_id":
                raise KeyError(key)
            setattr(line, key, value)
        return line

    def add_line(self, line: SimLine) -> None:
        self.lines[line.line_id] = line
        self.queue.append(line.line_id)

    def remove_line(self, line_id: str) -> None:
        del self.lines[line_id]
        self.queue.remove(line_id)

    def pick_line(self, provider: str | None) -> SimLine | None:
        for line_id in self.queue:
            line = self.lines[line_id]
            if line.usable and (provider is None or line.provider == provider):
                self.queue.remove(line_id)
                self.queue.append(line_id)
                return line
        return None

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lines": [asdict(line) for line in self.lines.values()],
            "fault": asdict(self.fault),
            "status_push_url": self.status_push_url,
            "inbound_push_url": self.inbound_push_url,
            "drop_reports": self.drop_reports,
            "tasks": len(self.tasks),
            "sent": len(self.sent),
            "pushes": self.pushes,
        }


def _line_from_spec(spec: dict[str, Any]) -> SimLine:
    known = SimLine.__dataclass_fields__
    unknown = set(spec) - set(known)
    if unknown:
        raise ValueError(f"unknown line fields: {', '.join(sorted(unknown))}")
    return SimLine(**spec)


def _server_from_spec(spec: dict[str, Any]) -> SimServer:
    lines = [_line_from_spec(item) for item in spec.get("lines", [])]
    return SimServer(
        name=spec["name"],
        username=spec.get("username", "root"),
        password=spec["password"],
        lines={line.line_id: line for line in lines},
        status_push_url=spec.get("status_push_url"),
        inbound_push_url=spec.get("inbound_push_url"),
        send_delay=float(spec.get("send_delay", 0.05)),
        quirks=bool(spec.get("quirks", True)),
    )


class SimFleet:
    def __init__(self, servers: dict[str, SimServer] | None = None, seed: int = 7) -> None:
        self.servers: dict[str, SimServer] = servers or {}
        self.rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_spec(cls, spec: dict[str, Any], seed: int = 7) -> SimFleet:
        servers = [_server_from_spec(item) for item in spec.get("servers", [])]
        return cls({server.name: server for server in servers}, seed)

    def add_server(self, spec: dict[str, Any]) -> SimServer:
        server = _server_from_spec(spec)
        if server.name in self.servers:
            raise ValueError(f"server {server.name} exists")
        self.servers[server.name] = server
        return server

    # --- sending and pushing ---------------------------------------------------------------

    def send(
        self,
        server: SimServer,
        numbers: list[str],
        content: str,
        provider: str | None,
        goip_line: str | None,
    ) -> dict[str, str]:
        if goip_line is not None:
            line = server.lines.get(goip_line)
            if line is None or not line.usable:
                return {"result": "REJECT", "reason": "none_line"}
            chosen: list[SimLine] = [line]
        else:
            if provider is not None and not any(
                line.provider == provider for line in server.lines.values()
            ):
                return {"result": "REJECT", "reason": "none_provider"}
            chosen = []
        if goip_line is None and not any(
            line.usable and (provider is None or line.provider == provider)
            for line in server.lines.values()
        ):
            return {"result": "REJECT", "reason": "none_line"}
        server.next_task += 1
        task_id = str(server.next_task)
        subtasks = []
        for number in numbers:
            line = chosen[0] if chosen else server.pick_line(provider)
            if line is None:  # quota ran out within this request
                subtasks.append(SubTask(task_id, number, content, None, "failed", "302"))
                continue
            subtasks.append(SubTask(task_id, number, content, line.line_id, "sending"))
        server.tasks[task_id] = subtasks
        self._spawn(self._complete(server, subtasks))
        return {"result": "ACCEPT", "taskID": task_id}

    async def _complete(self, server: SimServer, subtasks: list[SubTask]) -> None:
        await asyncio.sleep(server.send_delay)
        receipts = []
        for sub in subtasks:
            line = server.lines.get(sub.goip_line or "")
            if sub.send == "sending":
                if line is not None and line.fail_code is None and line.usable:
                    sub.send = "succeeded"
                    if line.remain_sms > 0:
                        line.remain_sms -= 1
                    if line.day_remain_sms > 0:
                        line.day_remain_sms -= 1
                    if line.receipt:
                        receipts.append(sub)
                else:
                    sub.send = "failed"
                    sub.err_code = line.fail_code if line is not None and line.fail_code else "331"
            server.sent.append(
                {
                    "task_id": sub.task_id,
                    "sub_task_id": sub.sub_task_id,
                    "number": sub.number,
                    "content": sub.content,
                    "goip_line": sub.goip_line,
                    "result": sub.send,
                    "err_code": sub.err_code,
                    "at": time.time(),
                }
            )
            await self.push(server, server.status_push_url, sub.report(), report=True)
        if receipts:
            await asyncio.sleep(server.send_delay)
            for sub in receipts:
                sub.receipt = True
                await self.push(server, server.status_push_url, sub.report(), report=True)

    async def push(
        self, server: SimServer, url: str | None, body: dict[str, Any], report: bool = False
    ) -> str:
        if url is None:
            return "no_url"
        if report and server.drop_reports:
            return "dropped"
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        for attempt in range(PUSH_ATTEMPTS):
            try:
                async with self._session.post(
                    url,
                    data=json.dumps(body, ensure_ascii=False),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    if resp.status < 300:
                        server.pushes += 1
                        return "ok"
                    outcome = f"http_{resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = exc.__class__.__name__
            await asyncio.sleep(0.1 * 2**attempt)
        log.warning("sim_push_dropped", server=server.name, outcome=outcome)
        return outcome

    async def push_inbound(
        self, server: SimServer, goip_line: str, from_number: str, content: str
    ) -> str:
        body = {
            "goip_line": goip_line,
            "from_number": from_number,
            "content": content,
            "recv_time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        }
        return await self.push(server, server.inbound_push_url, body)

    # --- churn -------------------------------------------------------------------------------

    async def churn(self, interval: float) -> None:
        """Every `interval`, one random line changes state (seeded: reproducible)."""
        while True:
            await asyncio.sleep(interval)
            if not self.servers:
                continue
            server = self.servers[self.rng.choice(sorted(self.servers))]
            if not server.lines:
                continue
            line = server.lines[self.rng.choice(sorted(server.lines))]
            change = self.rng.choice(["online", "reg", "quota", "restore"])
            if change == "online":
                line.online = not line.online
            elif change == "reg":
                line.reg = "LOGOUT" if line.reg == "LOGIN" else "LOGIN"
            elif change == "quota":
                line.day_remain_sms = 0
            else:
                line.online, line.reg = True, "LOGIN"
                if line.day_remain_sms == 0:
                    line.day_remain_sms = 100
            log.info("sim_churn", server=server.name, line=line.line_id, change=change)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


# --- HTTP: the vendor API ----------------------------------------------------------------------

FLEET_KEY = web.AppKey("fleet", SimFleet)


def _encode(server: SimServer, payload: Any) -> web.Response:
    text = json.dumps(payload, ensure_ascii=False)
    if server.quirks and isinstance(payload, list) and payload:
        # The vendor's own examples end arrays with "},\n]"; real servers are reported to as well.
        text = "[\n" + ",\n".join(json.dumps(item, ensure_ascii=False) for item in payload) + ",\n]"
    content_type = "text/html" if server.quirks else "application/json"
    return web.Response(text=text, content_type=content_type, charset="utf-8")


async def goip_api(request: web.Request) -> web.StreamResponse:
    fleet = request.app[FLEET_KEY]
    server = fleet.servers.get(request.match_info["server"])
    api = request.match_info["api"]
    if server is None or api not in ("sendsms", "querysms", "querylines"):
        raise web.HTTPNotFound()
    mode = server.fault.mode
    if mode in ("reset", "down"):
        # Gone away: the connection dies without an HTTP answer.
        assert request.transport is not None
        request.transport.close()
        raise web.HTTPInternalServerError()
    if mode in ("timeout", "slow"):
        await asyncio.sleep(server.fault.delay)
    if mode == "http_500":
        return web.Response(status=500, text="Internal Server Error")
    if mode == "html":
        return web.Response(text=HTML_PAGE, content_type="text/html")
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.Response(status=400, text="bad request")
    auth = body.get("auth") if isinstance(body, dict) else None
    if (
        mode == "wrong_auth"
        or not isinstance(auth, dict)
        or auth.get("username") != server.username
        or auth.get("password") != server.password
    ):
        return web.Response(status=401, text="Unauthorized")
    if api == "querylines":
        reply: Any = [line.json() for line in server.lines.values()]
    elif api == "querysms":
        task = str(body.get("taskID", ""))
        task_id, _, number = task.partition(".")
        reply = [
            sub.report()
            for sub in server.tasks.get(task_id, [])
            if not number or sub.number == number
        ]
    else:
        number_field = str(body.get("number", "")).strip()
        content = body.get("content")
        if not number_field or not isinstance(content, str) or not content:
            reply = {"result": "REJECT", "reason": "unknown"}
        else:
            numbers = list(dict.fromkeys(n.strip() for n in number_field.split(",") if n.strip()))
            reply = fleet.send(
                server, numbers[:9999], content, body.get("provider"), body.get("goip_line")
            )
    response = _encode(server, reply)
    if mode == "truncated_json":
        text = response.text or ""
        return web.Response(text=text[: max(len(text) // 2, 1)], content_type="text/html")
    return response


# --- HTTP: the control API ---------------------------------------------------------------------


def _server(request: web.Request) -> SimServer:
    server = request.app[FLEET_KEY].servers.get(request.match_info["server"])
    if server is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no such server"}), content_type="application/json"
        )
    return server


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text='{"error": "bad JSON"}', content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "expected an object"}', content_type="application/json"
        )
    return body


async def control_servers(request: web.Request) -> web.Response:
    return web.json_response(sorted(request.app[FLEET_KEY].servers))


async def control_server(request: web.Request) -> web.Response:
    return web.json_response(_server(request).state())


async def control_add_server(request: web.Request) -> web.Response:
    try:
        server = request.app[FLEET_KEY].add_server(await _body(request))
    except (KeyError, ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(server.state(), status=201)


async def control_patch_line(request: web.Request) -> web.Response:
    server = _server(request)
    line_id = request.match_info["line"]
    if line_id not in server.lines:
        return web.json_response({"error": "no such line"}, status=404)
    try:
        line = server.set_line(line_id, **await _body(request))
    except (KeyError, TypeError) as exc:
        return web.json_response({"error": f"unknown field {exc}"}, status=400)
    return web.json_response(asdict(line))


async def control_add_line(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        line = _line_from_spec(await _body(request))
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if line.line_id in server.lines:
        return web.json_response({"error": "line exists"}, status=409)
    server.add_line(line)
    return web.json_response(asdict(line), status=201)


async def control_delete_line(request: web.Request) -> web.Response:
    server = _server(request)
    line_id = request.match_info["line"]
    if line_id not in server.lines:
        return web.json_response({"error": "no such line"}, status=404)
    server.remove_line(line_id)
    return web.json_response({"deleted": line_id})


async def control_fault(request: web.Request) -> web.Response:
    server = _server(request)
    body = await _body(request)
    mode = body.get("mode", "none")
    if mode not in FAULT_MODES:
        return web.json_response({"error": f"mode must be one of {FAULT_MODES}"}, status=400)
    server.fault = Fault(mode, float(body.get("delay", server.fault.delay)))
    return web.json_response(asdict(server.fault))


async def control_push(request: web.Request) -> web.Response:
    server = _server(request)
    body = await _body(request)
    if "status_url" in body:
        server.status_push_url = body["status_url"]
    if "inbound_url" in body:
        server.inbound_push_url = body["inbound_url"]
    if "drop_reports" in body:
        server.drop_reports = bool(body["drop_reports"])
    return web.json_response(server.state())


async def control_inbound(request: web.Request) -> web.Response:
    server = _server(request)
    body = await _body(request)
    outcome = await request.app[FLEET_KEY].push_inbound(
        server,
        str(body.get("goip_line", "")),
        str(body.get("from_number", "")),
        str(body.get("content", "")),
    )
    return web.json_response({"push": outcome})


async def control_sent(request: web.Request) -> web.Response:
    return web.json_response(_server(request).sent)


def build_app(fleet: SimFleet) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[FLEET_KEY] = fleet
    r = app.router
    r.add_get("/_control/servers", control_servers)
    r.add_post("/_control/servers", control_add_server)
    r.add_get("/_control/servers/{server}", control_server)
    r.add_post("/_control/servers/{server}/lines", control_add_line)
    r.add_patch("/_control/servers/{server}/lines/{line}", control_patch_line)
    r.add_delete("/_control/servers/{server}/lines/{line}", control_delete_line)
    r.add_put("/_control/servers/{server}/fault", control_fault)
    r.add_put("/_control/servers/{server}/push", control_push)
    r.add_post("/_control/servers/{server}/inbound", control_inbound)
    r.add_get("/_control/servers/{server}/sent", control_sent)
    # The trailing slash is part of the vendor URL: without it the real server answers 404.
    r.add_post("/{server}/goip/{api}/", goip_api)
    return app


@dataclass
class RunningSimulator:
    fleet: SimFleet
    runner: web.AppRunner
    port: int
    host: str = "127.0.0.1"

    def base_url(self, server: str) -> str:
        return f"http://{self.host}:{self.port}/{server}"

    async def stop(self) -> None:
        await self.fleet.close()
        await self.runner.cleanup()


async def start_simulator(
    fleet: SimFleet, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    runner = web.AppRunner(
        build_app(fleet), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return RunningSimulator(fleet, runner, bound_port(site), host)


# --- fleets for the demo and benchmarks --------------------------------------------------------


def _lines(prefix: int, count: int, providers: list[str]) -> Iterator[dict[str, Any]]:
    for index in range(count):
        yield {
            "line_id": f"G{prefix}{index + 1:02d}",
            "provider": providers[index % len(providers)],
        }


def demo_spec(status_push_base: str | None) -> dict[str, Any]:
    """Three SMS Servers (8, 16 and 32 lines) with a few sick lines, as a rack really looks."""
    layout = [
        ("taipei", 1, 8, ["Chunghwa", "FarEasTone"]),
        ("kaohsiung", 2, 16, ["Chunghwa", "Taiwan Mobile"]),
        ("shenzhen", 3, 32, ["移动", "联通"]),
    ]
    servers = []
    for name, prefix, count, providers in layout:
        lines = list(_lines(prefix, count, providers))
        lines[1]["reg"] = "LOGOUT"  # a dead SIM
        lines[2]["reg"] = ""  # never registered
        lines[3].update(online=False, reg="")  # module offline
        lines[4].update(day_remain_sms=0, remain_sms=420)  # today's quota used up
        lines[5].update(remain_sms=900, day_remain_sms=60)  # finite quotas
        if name == "shenzhen":
            lines[6]["fail_code"] = "331"  # no network service
        server: dict[str, Any] = {
            "name": name,
            "username": "root",
            "password": f"demo-{name}",
            "lines": lines,
            "send_delay": 1.0,
        }
        if status_push_base:
            server["status_push_url"] = (
                f"{status_push_base}/hooks/goip/{name}/status?token=demo-hook-{name}"
            )
            server["inbound_push_url"] = (
                f"{status_push_base}/hooks/goip/{name}/inbound?token=demo-hook-{name}"
            )
        servers.append(server)
    return {"servers": servers}


def synthetic_spec(servers: int, lines_per_server: int, send_delay: float = 0.0) -> dict[str, Any]:
    """A large uniform fleet for benchmarks: s0001..sNNNN, every line registered, no limits."""
    return {
        "servers": [
            {
                "name": f"s{index + 1:04d}",
                "username": "root",
                "password": f"pw-s{index + 1:04d}",
                "send_delay": send_delay,
                "lines": [{"line_id": f"G{100 + line}"} for line in range(lines_per_server)],
            }
            for index in range(servers)
        ]
    }
