"""The simulated fleet over HTTP: many servers on one port, told apart by a path prefix.

Server `hq` answers the vendor API at `http://HOST:PORT/hq/goip/<api>/` in its profile
(state.py), its web inbox at `.../hq/goip/en/dologin.php` and `en/receive.php` (inbox.py), and
USSD and remote commands at `.../hq/goip/en/ussd.php` and `.../hq/goip/api.php` (relay.py).
Its GoIP devices' web pages are on a port of their own (devices.py, `device_url`). Tests, the
demo and the benchmarks drive the fleet through its control API under `/_control/` (no auth:
it only ever listens on loopback) or, in-process, through the same methods on
`SimFleet`/`SimServer`. Also here: starting it on loopback (`start_simulator`).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from goipd.sim.common import (
    SimError,
    control_errors,
    fault_response,
    http_url,
    json_body,
    seconds,
    serve,
)
from goipd.sim.goip.devices import DeviceHttp, device_lookup
from goipd.sim.goip.fleet import SimFleet
from goipd.sim.goip.inbox import SESSION_COOKIE, WebReply
from goipd.sim.goip.php import DB_DOWN_TEXT
from goipd.sim.goip.relay import RELAY_KEYS
from goipd.sim.goip.server import SimServer
from goipd.sim.goip.state import APIS, PROFILE_KEYS, PROFILE_V1284, UNSET
from goipd.sim.goip_sql import php_json_decode

HTML_ERROR_PAGE: Final = (
    "<html><head><title>SMS Server</title></head>"
    "<body><h1>Error</h1><p>Please login again.</p></body></html>"
)


# --- HTTP: the vendor API -----------------------------------------------------------------------

FLEET_KEY: Final = web.AppKey("goipd_sim_fleet", SimFleet)


def _vendor_server(request: web.Request) -> SimServer:
    server = request.app[FLEET_KEY].servers.get(request.match_info["server"])
    if server is None:
        raise web.HTTPNotFound()
    return server


async def _faulted(request: web.Request, server: SimServer) -> web.StreamResponse | None:
    """The server's fault, as every vendor URL meets it; None: the page or API answers."""
    early = await fault_response(request, server.fault, html_page=HTML_ERROR_PAGE)
    if early is None and server.fault.mode == "db_down":
        # inc/conn.inc.php dies in the database constructor, before auth and before the body.
        return web.Response(text=DB_DOWN_TEXT, content_type="text/html", charset="utf-8")
    return early


async def goip_api(request: web.Request) -> web.StreamResponse:
    server = _vendor_server(request)
    api = request.match_info["api"]
    if api not in APIS:
        raise web.HTTPNotFound()
    server.counters[f"requests_{api}"] += 1
    if api == "querylines":
        server.polled_at.append(time.time())
    mode = server.fault.mode
    early = await _faulted(request, server)
    if early is not None:
        return early
    if server.profile == PROFILE_V1284:
        php = await server.php_request(
            api,
            php_json_decode(await request.read()),
            remote=request.remote or "",
            refuse_auth=mode == "wrong_auth",
        )
        text = php.text
        if mode == "truncated_json":
            text = text[: len(text) // 2]
        return web.Response(
            status=php.status,
            text=text,
            content_type="text/html",
            charset="utf-8",
            headers=php.headers,
        )
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.Response(status=400, text="400 Bad Request", content_type="text/html")
    if mode == "wrong_auth" or not server.check_auth(body):
        return web.Response(status=401, text="401 Unauthorized", content_type="text/html")
    reply: Any
    if api == "querylines":
        reply = server.query_lines()
    elif api == "querysms":
        reply = server.query_sms(body.get("taskID", ""))
    else:
        reply = server.send_sms(
            body.get("number"), body.get("content"), body.get("provider"), body.get("goip_line")
        )
    text, content_type = server.encode(reply)
    if mode == "truncated_json":
        # The request was handled (a sendsms really was accepted); only the reply is cut.
        text = text[: len(text) // 2]
    return web.Response(text=text, content_type=content_type, charset="utf-8")


async def goip_dologin(request: web.Request) -> web.StreamResponse:
    """en/dologin.php: the web login, a PHP session for the inbox."""
    server = _vendor_server(request)
    server.counters["requests_dologin"] += 1
    early = await _faulted(request, server)
    if early is not None:
        return early
    form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
    reply = server.inbox.login(
        server,
        form,
        request.cookies.get(SESSION_COOKIE),
        refuse=server.fault.mode == "wrong_auth",
    )
    return _page(reply, truncate=False)


async def goip_receive(request: web.Request) -> web.StreamResponse:
    """en/receive.php: the inbox list (or, without a session, the login form)."""
    server = _vendor_server(request)
    server.counters["requests_receive"] += 1
    early = await _faulted(request, server)
    if early is not None:
        return early
    params = dict(request.query)
    if request.method == "POST":
        # PHP's $_REQUEST: the form's fields win over the query's.
        form = await request.post()
        params.update((key, value) for key, value in form.items() if isinstance(value, str))
    reply = server.inbox.page(
        server,
        params,
        request.query.get("page"),
        request.cookies.get(SESSION_COOKIE),
        refuse=server.fault.mode == "wrong_auth",
    )
    return _page(reply, truncate=server.fault.mode == "truncated_json")


async def _php_request(request: web.Request) -> dict[str, str]:
    """PHP's $_REQUEST: the query, and a POSTed form's fields over it."""
    params = dict(request.query)
    if request.method == "POST":
        form = await request.post()
        params.update((key, value) for key, value in form.items() if isinstance(value, str))
    return params


async def goip_ussd(request: web.Request) -> web.StreamResponse:
    """en/ussd.php: one USSD code relayed to a line, the answer when it comes."""
    server = _vendor_server(request)
    early = await _faulted(request, server)
    if early is not None:
        return early
    text = await server.ussd_request(
        await _php_request(request),
        cookie=request.cookies.get(SESSION_COOKIE),
        refuse=server.fault.mode == "wrong_auth",
    )
    return _page(WebReply(200, text), truncate=server.fault.mode == "truncated_json")


async def goip_command(request: web.Request) -> web.StreamResponse:
    """api.php: one remote command relayed to a line's GoIP."""
    server = _vendor_server(request)
    early = await _faulted(request, server)
    if early is not None:
        return early
    text = await server.command_request(
        await _php_request(request),
        cookie=request.cookies.get(SESSION_COOKIE),
        refuse=server.fault.mode == "wrong_auth",
    )
    return _page(WebReply(200, text), truncate=server.fault.mode == "truncated_json")


def _page(reply: WebReply, *, truncate: bool) -> web.Response:
    text = reply.text[: len(reply.text) // 2] if truncate else reply.text
    return web.Response(
        status=reply.status,
        text=text,
        content_type="text/html",
        charset="utf-8",
        headers=CIMultiDict(reply.headers),
    )


# --- HTTP: the control API ----------------------------------------------------------------------


def _server(request: web.Request) -> SimServer:
    return request.app[FLEET_KEY].server(request.match_info["server"])


async def control_servers(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[FLEET_KEY].servers))


async def control_add_server(request: web.Request) -> web.Response:
    server = request.app[FLEET_KEY].add_server(await json_body(request))
    return web.json_response(server.state(), status=201)


async def control_server(request: web.Request) -> web.Response:
    return web.json_response(_server(request).state())


async def control_patch_server(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request, PROFILE_KEYS, kind="server")
    return web.json_response(server.configure(**body))


async def control_tasks(request: web.Request) -> web.Response:
    return web.json_response(_server(request).stored_tasks())


async def control_delete_server(request: web.Request) -> web.Response:
    server = request.app[FLEET_KEY].remove_server(request.match_info["server"])
    return web.json_response({"deleted": server.name})


async def control_add_line(request: web.Request) -> web.Response:
    line = _server(request).add_line(await json_body(request))
    return web.json_response(line.state(), status=201)


async def control_patch_line(request: web.Request) -> web.Response:
    line = _server(request).set_line(request.match_info["line"], **await json_body(request))
    return web.json_response(line.state())


async def control_delete_line(request: web.Request) -> web.Response:
    line = _server(request).remove_line(request.match_info["line"])
    return web.json_response({"deleted": line.line_id})


async def control_fault(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request)
    fault = server.set_fault(str(body.get("mode", "none")), body.get("delay"))
    return web.json_response(asdict(fault))


async def control_push(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request, ("status_url", "inbound_url", "drop_reports"), kind="push")
    drop = body.get("drop_reports")
    if drop is not None and not isinstance(drop, bool):
        raise SimError("drop_reports must be true or false")
    return web.json_response(
        server.set_push(body.get("status_url", UNSET), body.get("inbound_url", UNSET), drop)
    )


async def control_inbound(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request)
    goip_line, from_number, content = (body.get(k) for k in ("goip_line", "from_number", "content"))
    if not all(isinstance(v, str) and v for v in (goip_line, from_number, content)):
        raise SimError("goip_line, from_number and content must be non-empty strings")
    recv_time = body.get("recv_time")
    if recv_time is not None and not _is_stamp(recv_time):
        raise SimError("recv_time must be a string 'YYYY-MM-DD hh:mm:ss'")
    outcome = await server.push_inbound(
        str(goip_line),
        str(from_number),
        str(content),
        recv_time=recv_time,
        push_after=seconds(body.get("push_after", 0), "push_after"),
    )
    return web.json_response(outcome)


def _is_stamp(value: Any) -> bool:
    """The `receive.time` column is a DATETIME: it holds nothing else."""
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return False
    return True


async def control_inbox(request: web.Request) -> web.Response:
    return web.json_response([row.control() for row in _server(request).inbox.rows])


async def control_sent(request: web.Request) -> web.Response:
    return web.json_response(_server(request).sent)


async def control_polls(request: web.Request) -> web.Response:
    return web.json_response(list(_server(request).polled_at))


async def control_relay(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_body(request, RELAY_KEYS, kind="relay")
    return web.json_response(server.configure_relay(**body))


async def control_ussd(request: web.Request) -> web.Response:
    return web.json_response(list(_server(request).ussd_log))


async def control_commands(request: web.Request) -> web.Response:
    return web.json_response(list(_server(request).command_log))


async def control_devices(request: web.Request) -> web.Response:
    fleet = request.app[FLEET_KEY]
    return web.json_response(
        [
            server.device_state(device)
            for server in fleet.servers.values()
            for device in server.devices.values()
        ]
    )


async def control_device(request: web.Request) -> web.Response:
    server, device = request.app[FLEET_KEY].device(request.match_info["device"])
    return web.json_response(server.device_state(device))


async def control_patch_device(request: web.Request) -> web.Response:
    server, device = request.app[FLEET_KEY].device(request.match_info["device"])
    device.configure(**await json_body(request))
    return web.json_response(server.device_state(device))


async def control_churn(request: web.Request) -> web.Response:
    fleet = request.app[FLEET_KEY]
    body = await json_body(request)
    fleet.start_churn(seconds(body.get("interval", 0.0), "interval"))
    return web.json_response({"interval": fleet.churn_interval})


def build_app(fleet: SimFleet) -> web.Application:
    # 9,999 recipients plus content fit easily; anything larger is a mistake.
    app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[control_errors])
    app[FLEET_KEY] = fleet

    async def churn_ctx(_app: web.Application) -> AsyncIterator[None]:
        if fleet.churn_interval > 0:
            fleet.start_churn(fleet.churn_interval)
        yield
        await fleet.close()

    app.cleanup_ctx.append(churn_ctx)
    r = app.router
    r.add_get("/_control/servers", control_servers)
    r.add_post("/_control/servers", control_add_server)
    r.add_get("/_control/servers/{server}", control_server)
    r.add_patch("/_control/servers/{server}", control_patch_server)
    r.add_delete("/_control/servers/{server}", control_delete_server)
    r.add_get("/_control/servers/{server}/tasks", control_tasks)
    r.add_post("/_control/servers/{server}/lines", control_add_line)
    r.add_patch("/_control/servers/{server}/lines/{line}", control_patch_line)
    r.add_delete("/_control/servers/{server}/lines/{line}", control_delete_line)
    r.add_put("/_control/servers/{server}/fault", control_fault)
    r.add_put("/_control/servers/{server}/push", control_push)
    r.add_post("/_control/servers/{server}/inbound", control_inbound)
    r.add_get("/_control/servers/{server}/sent", control_sent)
    r.add_get("/_control/servers/{server}/polls", control_polls)
    r.add_get("/_control/servers/{server}/inbox", control_inbox)
    r.add_patch("/_control/servers/{server}/relay", control_relay)
    r.add_get("/_control/servers/{server}/ussd", control_ussd)
    r.add_get("/_control/servers/{server}/commands", control_commands)
    r.add_get("/_control/devices", control_devices)
    r.add_get("/_control/devices/{device}", control_device)
    r.add_patch("/_control/devices/{device}", control_patch_device)
    r.add_put("/_control/churn", control_churn)
    # One dynamic route for every server: a dict lookup per request, however large the fleet.
    # The trailing slash is part of the vendor URL; without it the real server answers 404.
    r.add_post("/{server}/goip/{api}/", goip_api)
    r.add_post("/{server}/goip/en/dologin.php", goip_dologin)
    r.add_get("/{server}/goip/en/receive.php", goip_receive)
    r.add_post("/{server}/goip/en/receive.php", goip_receive)
    for method in ("GET", "POST"):
        r.add_route(method, "/{server}/goip/en/ussd.php", goip_ussd)
        r.add_route(method, "/{server}/goip/api.php", goip_command)
    return app


# --- running it ---------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RunningSimulator:
    fleet: SimFleet
    runner: web.AppRunner
    port: int
    host: str = "127.0.0.1"
    devices: DeviceHttp | None = None
    """The devices' web server, on a port of its own (it writes bare-LF HTTP)."""

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def base_url(self, server: str) -> str:
        """What goipd's config calls the server's `url`."""
        return f"{self.url}/{server}"

    def device_url(self, device: str) -> str:
        """A device's web address: its status page is `<this>/default/en_US/status.xml`."""
        if self.devices is None:
            raise RuntimeError("this simulator serves no devices")
        return f"{http_url(self.host, self.devices.port)}/{device}"

    async def stop(self) -> None:
        if self.devices is not None:
            await self.devices.close()
        await self.runner.cleanup()
        # Normally done by the app's cleanup; repeated here in case the app never started.
        await self.fleet.close()


async def start_simulator(
    fleet: SimFleet, host: str = "127.0.0.1", port: int = 0, *, device_port: int = 0
) -> RunningSimulator:
    if not is_loopback(host):
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")
    devices = DeviceHttp(device_lookup(lambda: fleet.servers.values()))
    await devices.start(host, device_port)
    try:
        runner, bound = await serve(build_app(fleet), host, port, backlog=1024)
    except BaseException:
        await devices.close()
        raise
    return RunningSimulator(fleet, runner, bound, host, devices)
