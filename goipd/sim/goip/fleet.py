"""SimFleet: the simulated SMS Servers behind one port, the pushes of their send results and
inbound SMS to configured URLs, random line churn, and the background tasks all of it runs in."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

import structlog

from goipd.sim.common import Background, SimError, seconds, url_for_log
from goipd.sim.goip.devices import SimDevice
from goipd.sim.goip.server import SimServer
from goipd.sim.goip.state import ServerState, SimConflict
from goipd.sim.goip_sql import php_json_encode

log = structlog.get_logger("goipd.sim")


class SimFleet:
    def __init__(
        self,
        servers: Iterable[SimServer] = (),
        *,
        seed: int = 7,
        churn_interval: float = 0.0,
        push_attempts: int = 4,
        push_backoff: float = 0.1,
        push_timeout: float = 5.0,
    ) -> None:
        self.servers: dict[str, SimServer] = {}
        self.rng = random.Random(seed)
        self.churn_interval = churn_interval
        self.push_attempts = max(1, push_attempts)
        self.push_backoff = push_backoff
        self.push_timeout = push_timeout
        self._background = Background()
        self._churn: asyncio.Task[None] | None = None
        for server in servers:
            self.add_server(server)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], seed: int | None = None) -> SimFleet:
        if not isinstance(spec, Mapping):
            raise SimError("a fleet spec must be an object")
        unknown = set(spec) - {"servers", "seed", "churn_interval"}
        if unknown:
            raise SimError(f"unknown fleet fields: {', '.join(sorted(unknown))}")
        return cls(
            [SimServer.from_spec(item) for item in spec.get("servers") or []],
            seed=int(spec.get("seed", 7)) if seed is None else seed,
            churn_interval=seconds(spec.get("churn_interval", 0.0), "churn_interval"),
        )

    def add_server(self, server: SimServer | Mapping[str, Any]) -> SimServer:
        new = server if isinstance(server, SimServer) else SimServer.from_spec(server)
        if new.name in self.servers:
            raise SimConflict(f"server {new.name} exists")
        # Devices are served by name on one port: a name is the fleet's, not the server's.
        known = {name for server in self.servers.values() for name in server.devices}
        taken = sorted(known.intersection(new.devices))
        if taken:
            raise SimConflict(f"device {taken[0]} exists")
        new._fleet = self
        self.servers[new.name] = new
        return new

    def remove_server(self, name: str) -> SimServer:
        server = self.server(name)
        del self.servers[name]
        return server

    def server(self, name: str) -> SimServer:
        try:
            return self.servers[name]
        except KeyError:
            raise LookupError(f"no server {name}") from None

    def device(self, name: str) -> tuple[SimServer, SimDevice]:
        """A device and the server whose lines it carries."""
        for server in self.servers.values():
            device = server.devices.get(name)
            if device is not None:
                return server, device
        raise LookupError(f"no device {name}")

    # --- background work -------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._background.spawn(coro)

    async def push(
        self,
        server: ServerState,
        url: str | None,
        body: Mapping[str, Any],
        kind: str,
        *,
        php: bool = False,
    ) -> str:
        """POST one JSON report; retry a few times, then drop it as a real server would.

        `php`: as v1.28.4's `send_json.php` does it: PHP's json_encode, one try (a curl POST
        without retry; the answer is ignored).
        """
        if url is None:
            return "no_url"
        if php:
            data = php_json_encode(dict(body)).encode()
            headers = {"Content-Type": "application/json; charset=utf-8"}
        else:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json"}
        attempts = 1 if php else self.push_attempts
        outcome, attempt = await self._background.push(
            "POST",
            url,
            session_timeout=self.push_timeout,
            attempts=attempts,
            backoff=self.push_backoff,
            data=data,
            headers=headers,
        )
        if outcome == "ok":
            server.counters[f"push_{kind}_ok"] += 1
            log.info(
                "report_pushed",
                server=server.name,
                kind=kind,
                task=body.get("taskID"),
                send=body.get("send"),
                receipt=body.get("receipt") in ("1", 1),
                attempt=attempt,
            )
            return outcome
        server.counters[f"push_{kind}_failed"] += 1
        log.warning(
            "report_push_dropped",
            server=server.name,
            kind=kind,
            url=url_for_log(url),
            task=body.get("taskID"),
            outcome=outcome,
            attempts=attempts,
        )
        return outcome

    # --- churn -------------------------------------------------------------------------------

    def churn_step(self) -> dict[str, str] | None:
        """One random line changes state; seeded, so a run can be replayed."""
        candidates = [server for server in self.servers.values() if server.lines]
        if not candidates:
            return None
        server = self.rng.choice(candidates)
        line = server.lines[self.rng.choice(list(server.lines))]
        change = self.rng.choice(("online", "reg", "quota", "restore"))
        if change == "online":
            line.online = not line.online
        elif change == "reg":
            line.reg = "LOGOUT" if line.reg == "LOGIN" else "LOGIN"
        elif change == "quota":
            line.day_remain_sms = 0
        else:
            server.restore_line(line.line_id)
        log.info("sim_churn", server=server.name, line=line.line_id, change=change)
        return {"server": server.name, "line": line.line_id, "change": change}

    def start_churn(self, interval: float) -> None:
        self.stop_churn()
        self.churn_interval = interval
        if interval > 0:
            self._churn = self.spawn(self._churn_loop(interval))

    def stop_churn(self) -> None:
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None

    async def _churn_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.churn_step()

    async def close(self) -> None:
        self.stop_churn()
        await self._background.close()
