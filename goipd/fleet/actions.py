"""Actions on one line through its SMS Server: reboot its module or its whole device
(`api.php`), and a USSD code by hand (`en/ussd.php`). Asked for over the API, from the CLI, or
by remediation (goipd/fleet/remediation.py).

One action per line at a time: a second one is refused while the first runs, in this process
and, through a lease in the ledger, on every instance sharing it (two reboots in a row would
only lengthen the outage, and two relayed sessions on one line answer each other). Each action
is logged with who asked for it and counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from goipd.ledger.base import Coordination
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from goipd.upstream.errors import UpstreamError
from goipd.upstream.goip_commands import CommandClient, CommandReply
from goipd.upstream.goip_ussd import UssdAnswer, UssdClient

log = structlog.get_logger("goipd.fleet.actions")
Action = Literal["reboot_module", "reboot_device", "ussd"]
LEASE_TTL = 300.0
"""Longer than any action takes (a USSD answer: 130 s; a command: 60 s), so a lease left by a
process that died ends on its own."""


def ussd_lease(server: str) -> str:
    """The lease every USSD session of `server` runs under, by hand or a scheduled balance read,
    on whichever instance: the SMS Server tells sessions apart by the second they started in,
    so two instances' sessions would get each other's answers."""
    return f"ussd:{server}"


class ActionRefused(Exception):
    """Another action on the line is under way, or the line is unknown."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ActionResult:
    server: str
    line: str
    action: Action
    ok: bool
    detail: str
    """The SMS Server's answer, or why the action failed."""
    seconds: float


class LineActions:
    def __init__(
        self,
        ledger: Coordination,
        metrics: Metrics,
        commands: Callable[[str], CommandClient | None],
        ussd: Callable[[str], UssdClient | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.commands = commands
        self.ussd_clients = ussd
        self.clock = clock
        self._running: set[tuple[str, str]] = set()

    def busy(self, server: str, line: str) -> bool:
        return (server, line.casefold()) in self._running

    async def reboot(self, server: str, line: str, *, device: bool, asked_by: str) -> ActionResult:
        """Reboot the line's module (or, with `device`, the GoIP it is on): refused with
        ActionRefused while another action on the line runs; a failure is the result's
        detail, not an exception."""
        client = self.commands(server)
        if client is None:
            raise ActionRefused(404, f"no server named {server!r}")
        action: Action = "reboot_device" if device else "reboot_module"

        async def act() -> str:
            reply: CommandReply = await (
                client.reboot_device(line) if device else client.reboot_module(line)
            )
            return reply.text

        return await self._run(server, line, action, asked_by, act)

    async def ussd(self, server: str, line: str, code: str, *, asked_by: str) -> ActionResult:
        client = self.ussd_clients(server)
        if client is None:
            raise ActionRefused(404, f"no server named {server!r}")

        async def act() -> str:
            answer: UssdAnswer = await client.run(line, code)
            return answer.text

        return await self._run(server, line, "ussd", asked_by, act, ussd_lease(server))

    async def _run(
        self,
        server: str,
        line: str,
        action: Action,
        asked_by: str,
        act: Callable[[], Awaitable[str]],
        server_lease: str | None = None,
    ) -> ActionResult:
        key = (server, line.casefold())
        if key in self._running:
            raise ActionRefused(409, f"another action on {server}/{line} is under way")
        lease = f"action:{server}/{line.casefold()}"
        leases = [lease] if server_lease is None else [lease, server_lease]
        self._running.add(key)
        try:
            try:
                held = await self.ledger.acquire_leases(dict.fromkeys(leases, LEASE_TTL))
            except LedgerError as exc:
                raise ActionRefused(
                    503, f"the ledger cannot take the action's lease: {exc}"
                ) from None
            if lease not in held:
                await self._release(server, line, [name for name in leases if name in held])
                raise ActionRefused(
                    409, f"another goipd instance runs an action on {server}/{line}"
                )
            if server_lease is not None and server_lease not in held:
                await self._release(server, line, [lease])
                raise ActionRefused(
                    409,
                    f"another goipd instance runs a USSD session on {server} (a balance read); "
                    "try again in a minute",
                )
            try:
                return await self._act(server, line, action, asked_by, act)
            finally:
                await self._release(server, line, leases)
        finally:
            self._running.discard(key)

    async def _release(self, server: str, line: str, leases: list[str]) -> None:
        if not leases:
            return
        try:
            await self.ledger.release_leases(leases)
        except LedgerError as exc:
            # They run out on their own after LEASE_TTL.
            log.warning("action_lease_kept", server=server, line=line, reason=str(exc))

    async def _act(
        self,
        server: str,
        line: str,
        action: Action,
        asked_by: str,
        act: Callable[[], Awaitable[str]],
    ) -> ActionResult:
        log.info("line_action_started", server=server, line=line, action=action, asked_by=asked_by)
        started = self.clock()
        try:
            detail = await act()
            ok, result = True, "ok"
        except UpstreamError as exc:
            detail, ok, result = exc.detail, False, exc.reason.value
        except ValueError as exc:  # a line name or code the clients refuse
            raise ActionRefused(422, str(exc)) from None
        seconds = self.clock() - started
        self.metrics.line_actions.labels(server, action, result).inc()
        report = log.info if ok else log.warning
        report(
            "line_action_done",
            server=server,
            line=line,
            action=action,
            asked_by=asked_by,
            result=result,
            seconds=round(seconds, 1),
        )
        return ActionResult(server, line, action, ok, detail, seconds)
