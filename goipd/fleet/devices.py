"""Signal and SIM identity from the GoIP devices themselves: each configured device's web status
page (`status.xml`, goipd/upstream/goip_device.py) is polled every `poll_interval`, and what
each port shows is kept on the SMS Server line `servers[].devices[].lines` maps it to
(`LineRegistry.devices`): signal (CSQ and dBm), operator, SIM, module and GSM registration.

What keeps it apart from the lines' state:
- A device is polled only by the instance that polls its SMS Server, and only while that
  server answers (the balances' rule): a device whose server is down is not worth the
  traffic, and its readings go stale like the server's line gauges.
- A poll that fails (no connection, a timeout, a 401, a page that is no status page) is the
  device's error: counted, logged on a change (`device_poll_failed`), shown on its lines. It
  never touches the lines' querylines state, so routing does not change.
- A failed poll keeps the ports' last readings, marked with the device's error; they count as
  fresh for STALE_POLLS poll intervals after the device last showed them, so one missed poll
  leaves no gap in the graphs. After that the API still shows them (with `stale`), but their
  gauges are no longer exported: alerts on a signal or a SIM nobody can see any more would be
  guesses (GoipdDeviceUnreachable covers the device).

Each device is polled at its own random phase in its interval, with a few percent of jitter
per run, so a rack of devices configured alike is not polled in lock-step.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from goipd.config import Device, Server
from goipd.fleet.registry import LineRegistry
from goipd.metrics.catalog import Metrics
from goipd.runtime.wakeup import Wakeup
from goipd.upstream.errors import UpstreamError
from goipd.upstream.goip_device import DeviceClient, DeviceStatus, csq_dbm

log = structlog.get_logger("goipd.fleet.devices")

STALE_POLLS = 3
"""A port's readings are current for this many poll intervals after the device last showed
them."""
RUN_JITTER = 0.05
"""Each interval is this fraction longer or shorter at random, so phases do not line up again."""
IDLE_WAIT = 60.0
"""How long the loop sleeps with no device configured (a reload wakes it at once)."""


@dataclass(frozen=True, slots=True)
class DevicePoll:
    """A device's latest poll, as its lines carry it."""

    device: str
    at: float | None = None
    """When it was last polled, successfully or not; None: not yet."""
    ok_at: float | None = None
    """When a poll last worked."""
    reason: str | None = None
    """Why the latest poll failed (an ErrorReason value); None when it worked."""
    detail: str | None = None
    failures: int = 0
    """Failed polls in a row."""

    @property
    def ok(self) -> bool | None:
        """Whether the latest poll worked; None before the first."""
        return None if self.at is None else self.reason is None


@dataclass(frozen=True, slots=True)
class DeviceLine:
    """What a line's device port shows, and how the device's latest poll went."""

    server: str
    line: str
    device: str
    port: int
    interval: float
    """The device's poll_interval: readings go stale after STALE_POLLS of them."""
    poll: DevicePoll
    csq: int | None = None
    """0-31; None for 99 (unknown), an unreadable value, or never read."""
    operator: str | None = None
    sim_present: bool | None = None
    module_on: bool | None = None
    gsm_registered: bool | None = None
    seen_at: float | None = None
    """When the device last showed this port; None: never (or the page lacks the port)."""

    @property
    def signal_dbm(self) -> int | None:
        return csq_dbm(self.csq)

    def fresh(self, now: float) -> bool:
        """The readings are recent enough to export and alert on."""
        return self.seen_at is not None and now - self.seen_at <= STALE_POLLS * self.interval


# --- pure parts ---------------------------------------------------------------------------------


def placeholders(
    server: str, device: Device, poll: DevicePoll, before: Mapping[tuple[str, str], DeviceLine]
) -> dict[str, DeviceLine]:
    """The device's lines as configured, keeping what was read of a port that still maps to the
    same line (a reload must not blank the signal of every unchanged device)."""
    found = {}
    for port, line in sorted(device.lines.items()):
        old = before.get((server, line))
        if old is not None and (old.device, old.port) == (device.name, port):
            found[line] = replace(old, interval=device.poll_interval)
        else:
            found[line] = DeviceLine(server, line, device.name, port, device.poll_interval, poll)
    return found


def readings(
    server: str, device: Device, status: DeviceStatus, poll: DevicePoll, now: float
) -> dict[str, DeviceLine]:
    """Each configured port's line, as the device's page shows the port now. A port the page
    does not show (a GoIP-4 configured with port 8) reads unknown."""
    found = {}
    for port, line in sorted(device.lines.items()):
        shown = status.port(port)
        base = DeviceLine(server, line, device.name, port, device.poll_interval, poll)
        if shown is None:
            found[line] = base
            continue
        found[line] = replace(
            base,
            csq=shown.csq,
            operator=shown.operator,
            sim_present=shown.sim_present,
            module_on=shown.module_on,
            gsm_registered=shown.gsm_registered,
            seen_at=now,
        )
    return found


def changes(before: DeviceLine | None, after: DeviceLine) -> dict[str, object]:
    """The identity and module fields that changed between two readings of a port, by name
    (new values); the signal moves all the time and is left to the metrics."""
    if before is None or before.seen_at is None or after.seen_at is None:
        return {}
    return {
        name: getattr(after, name)
        for name in ("sim_present", "module_on", "gsm_registered", "operator")
        if getattr(before, name) != getattr(after, name)
    }


# --- the poller ---------------------------------------------------------------------------------


class StatusSource(Protocol):
    async def status(self) -> DeviceStatus: ...


def device_client(device: Device) -> StatusSource:
    """The device's web status client (config.BaseUrl admits only URLs it can use)."""
    return DeviceClient(
        device.name, device.url, device.username, device.password, timeout=device.timeout
    )


@dataclass(eq=False, slots=True)
class _Slot:
    server: str
    device: Device
    client: StatusSource
    due: float
    """Monotonic time of its next poll."""
    poll: DevicePoll
    task: asyncio.Task[None] | None = None
    missing_ports: frozenset[int] = field(default_factory=frozenset)


class DevicePoller:
    def __init__(
        self,
        registry: LineRegistry,
        metrics: Metrics,
        polls: Callable[[str], bool],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        client_for: Callable[[Device], StatusSource] = device_client,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.polls = polls
        """Whether this instance polls the server's devices: it polls the server, and it is up."""
        self.clock = clock
        self._rng = rng or random.Random()
        self._client_for = client_for
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._changed = Wakeup()
        self._crash: BaseException | None = None
        self._unknown_lines: set[tuple[str, str]] = set()
        """Mapped lines the server does not report, already logged."""

    # -- configuration

    def configure(self, servers: Mapping[str, Server]) -> None:
        """One client per configured device; a device whose settings did not change keeps its
        client, its phase and what it read."""
        wanted = {
            (server.name, device.name): (server, device)
            for server in servers.values()
            for device in server.devices
        }
        for key, slot in list(self._slots.items()):
            found = wanted.get(key)
            if found is None or found[1] != slot.device:
                self._retire(key, slot)
        now = time.monotonic()
        for key, (server, device) in wanted.items():
            if key in self._slots:
                continue
            self._slots[key] = _Slot(
                server.name,
                device,
                self._client_for(device),
                now + self._rng.uniform(0, device.poll_interval),
                DevicePoll(device.name),
            )
        entries: dict[tuple[str, str], DeviceLine] = {}
        for slot in self._slots.values():
            for line, entry in placeholders(
                slot.server, slot.device, slot.poll, self.registry.devices
            ).items():
                entries[(slot.server, line)] = entry
        self.registry.devices = entries
        self._changed.ring()

    def _retire(self, key: tuple[str, str], slot: _Slot) -> None:
        del self._slots[key]
        if slot.task is not None:
            slot.task.cancel()

    @property
    def devices(self) -> list[tuple[str, str]]:
        """(server, device) of every device polled."""
        return sorted(self._slots)

    # -- the loop

    async def run(self) -> None:
        """Poll every device when it is due, until cancelled."""
        try:
            while True:
                if self._crash is not None:
                    crash, self._crash = self._crash, None
                    raise crash
                now = time.monotonic()
                for key, slot in self._slots.items():
                    if slot.task is None and now >= slot.due:
                        jitter = 1 + self._rng.uniform(-RUN_JITTER, RUN_JITTER)
                        slot.due = now + slot.device.poll_interval * jitter
                        if not self.polls(slot.server):
                            continue  # another instance polls it: no task to spawn and end
                        slot.task = asyncio.create_task(
                            self._scheduled(key, slot), name=f"device:{key[0]}/{key[1]}"
                        )
                idle = [s.due for s in self._slots.values() if s.task is None]
                wait = min(idle, default=now + IDLE_WAIT) - now
                await self._changed.sleep(max(wait, 0.01))
        finally:
            await self.close()

    async def _scheduled(self, key: tuple[str, str], slot: _Slot) -> None:
        try:
            await self.poll_slot(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Raised again by run(), so the supervisor logs the traceback and counts the crash.
            self._crash = exc
        finally:
            slot.task = None
            self._changed.ring()

    async def close(self) -> None:
        """Cancel the polls under way (the clients hold no connection between polls)."""
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def poll(self, server: str, device: str) -> DevicePoll | None:
        """Poll one device now (whether this instance polls its server or not); its poll
        state after, or None for a device not configured."""
        slot = self._slots.get((server, device))
        if slot is None:
            return None
        await self.poll_slot(slot, always=True)
        return slot.poll

    async def poll_slot(self, slot: _Slot, *, always: bool = False) -> None:
        if not always and not self.polls(slot.server):
            return
        started = self.clock()
        try:
            status = await slot.client.status()
        except UpstreamError as exc:
            if self._current(slot):
                self._failed(slot, exc, started)
            return
        if self._current(slot):
            self._succeeded(slot, status, started)

    def _current(self, slot: _Slot) -> bool:
        """The slot is still configured (a reload may have replaced it during the poll)."""
        return self._slots.get((slot.server, slot.device.name)) is slot

    def _failed(self, slot: _Slot, exc: UpstreamError, now: float) -> None:
        before = slot.poll
        reason = exc.reason.value
        slot.poll = replace(
            before, at=now, reason=reason, detail=exc.detail, failures=before.failures + 1
        )
        self.metrics.device_polls.labels(slot.server, slot.device.name, reason).inc()
        if before.reason != reason:
            log.warning(
                "device_poll_failed",
                server=slot.server,
                device=slot.device.name,
                reason=reason,
                detail=exc.detail,
                last_ok=before.ok_at,
            )
        for line in slot.device.lines.values():
            key = (slot.server, line)
            entry = self.registry.devices.get(key)
            if entry is not None:
                self.registry.devices[key] = replace(entry, poll=slot.poll)

    def _succeeded(self, slot: _Slot, status: DeviceStatus, now: float) -> None:
        before = slot.poll
        slot.poll = DevicePoll(slot.device.name, at=now, ok_at=now)
        self.metrics.device_polls.labels(slot.server, slot.device.name, "ok").inc()
        if before.reason is not None:
            log.info(
                "device_poll_recovered",
                server=slot.server,
                device=slot.device.name,
                failures=before.failures,
            )
        missing = frozenset(port for port in slot.device.lines if status.port(port) is None)
        if missing and missing != slot.missing_ports:
            log.warning(
                "device_ports_missing",
                server=slot.server,
                device=slot.device.name,
                ports=sorted(missing),
                shown=len(status.ports),
            )
        slot.missing_ports = missing
        server = self.registry.servers.get(slot.server)
        for line, entry in readings(slot.server, slot.device, status, slot.poll, now).items():
            key = (slot.server, line)
            changed = changes(self.registry.devices.get(key), entry)
            if changed:
                log.info(
                    "device_port_changed",
                    server=slot.server,
                    line=line,
                    device=slot.device.name,
                    port=entry.port,
                    **changed,
                )
            self.registry.devices[key] = entry
            if server is not None and line not in server.lines and key not in self._unknown_lines:
                # Most likely a typo in servers[].devices[].lines: its signal is never shown.
                self._unknown_lines.add(key)
                log.warning(
                    "device_line_unknown",
                    server=slot.server,
                    line=line,
                    device=slot.device.name,
                    port=entry.port,
                )
