"""sd_notify(3) for a Type=notify service, without libsystemd: one datagram per state change.

The protocol is newline-separated KEY=VALUE assignments in one datagram to the AF_UNIX socket
named by $NOTIFY_SOCKET (a path, or an abstract-namespace name written with a leading "@").
Outside systemd (no $NOTIFY_SOCKET) every method is a cheap no-op, so the daemon calls them
unconditionally.

Sending must never take the daemon down or stall it: the socket is non-blocking, every OSError
is swallowed and logged once (until a send succeeds again), and a full or vanished socket only
costs a lost notification. A lost WATCHDOG=1 is harmless as long as the next one arrives in
time; that is why pings go out at half the watchdog timeout.

The watchdog pings come from `watchdog_loop`, a task on the daemon's own event loop, on purpose:
a thread would keep pinging while the loop is stuck in a blocking call, and the point of the
watchdog is that systemd kills and restarts exactly that daemon.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("goipd.runtime.sdnotify")

_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")


class Notifier:
    """A client for one notify socket; see `from_env`. Not thread-safe: use it from one loop."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        # address is $NOTIFY_SOCKET as systemd sets it; None (or "") disables everything.
        self._address: bytes | None = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> Notifier:
        """Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the latter two as
        sd_watchdog_enabled(3) does: the watchdog is ours only if WATCHDOG_PID is unset or is this
        process, because the variables may have been inherited from a parent that was the one
        supervised). With unset_environment, os.environ loses the three variables so processes
        started later do not report in goipd's name."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = _watchdog_usec(env)
        if unset_environment:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (goipd runs under systemd with Type=notify)."""
        return self._address is not None

    @property
    def watchdog_usec(self) -> int | None:
        """systemd's watchdog timeout in µs, or None when the watchdog is off or not ours."""
        return self._watchdog_usec if self.enabled else None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3)
        advises, so one late ping is not yet fatal. None when there is nothing to ping."""
        usec = self.watchdog_usec
        return usec / 2 / 1_000_000 if usec is not None else None

    def notify(self, **fields: str | int | bool) -> bool:
        """Sends the fields as one datagram, in the given order (`notify(READY=1, STATUS="up")`).
        True if it was sent; False when disabled or on a send failure, which never raises."""
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            if not _KEY.fullmatch(key):
                # A programming error, not a send failure: say so loudly.
                raise ValueError(f"sd_notify field names are upper-case identifiers, got {key!r}")
            if isinstance(value, bool):
                value = int(value)
            # A newline would start a new assignment: free text (STATUS=) must stay on one line.
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self._send("\n".join(lines).encode("utf-8"))

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """A reload has begun; call `ready()` when it is done. MONOTONIC_USEC lets systemd >= 253
        (Type=notify-reload) match this message to the reload it asked for; older versions
        ignore the field."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=_monotonic_usec())

    def stopping(self) -> bool:
        """Shut-down has begun: systemd shows `deactivating` instead of reporting a crash."""
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status goipd`."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """A keep-alive ping; only meaningful when `watchdog_interval` is not None."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Asks systemd for `seconds` more before it gives up on the current start, reload or
        stop (EXTEND_TIMEOUT_USEC), e.g. during a long ledger migration at start-up."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, data: bytes) -> bool:
        assert self._address is not None
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Non-blocking: a receiver that stopped reading costs a dropped message (EAGAIN),
                # never a stalled event loop.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            if not self._failing:
                # Once per run of failures: the watchdog would otherwise log every few seconds.
                log.warning(
                    "notify_failed",
                    socket=_display(self._address),
                    error=exc.__class__.__name__,
                    detail=exc.strerror or str(exc),
                )
                self._failing = True
            return False
        self._failing = False
        return True

    def __repr__(self) -> str:
        where = _display(self._address) if self._address is not None else None
        return f"Notifier(socket={where!r}, watchdog_usec={self.watchdog_usec!r})"


async def watchdog_loop(notifier: Notifier, is_healthy: Callable[[], bool] = lambda: True) -> None:
    """Sends WATCHDOG=1 every `notifier.watchdog_interval` seconds while is_healthy() is true.

    Run it as a task on the daemon's event loop (and cancel it at shut-down). A loop blocked
    longer than WatchdogSec sends no ping, so systemd kills the process. While is_healthy() is
    false (or raises) pings are withheld: if it stays so for WatchdogSec, systemd restarts the
    daemon; if it recovers sooner, pings resume. Returns at once when there is no watchdog.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    withheld = False
    while True:
        try:
            healthy = is_healthy()
        except Exception as exc:
            healthy = False
            reason = f"health check raised {exc.__class__.__name__}"
        else:
            reason = "health check failed"
        if healthy:
            if withheld:
                log.info("watchdog_resumed")
            withheld = False
            notifier.watchdog()
        elif not withheld:
            log.warning("watchdog_withheld", reason=reason, timeout_s=interval * 2)
            withheld = True
        await asyncio.sleep(interval)


def _socket_address(value: str) -> bytes | None:
    """$NOTIFY_SOCKET as a sendto() address; None (with a warning) for forms we do not speak."""
    if value.startswith("@"):
        # Abstract namespace: "@" stands for the leading NUL byte.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    # systemd >= 254 may pass "vsock:CID:PORT" (VMs); a relative path is invalid per sd_notify(3).
    log.warning("notify_socket_unsupported", socket=value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("watchdog_env_invalid", WATCHDOG_USEC=raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            log.warning("watchdog_env_invalid", WATCHDOG_PID=raw_pid)
            return None
        if pid != os.getpid():
            return None
    return usec


def _monotonic_usec() -> int:
    # CLOCK_MONOTONIC explicitly (time.monotonic() does not promise which clock it reads): it is
    # the clock systemd compares MONOTONIC_USEC with.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _display(address: bytes) -> str:
    if address.startswith(b"\0"):
        return "@" + os.fsdecode(address[1:])
    return os.fsdecode(address)
