"""sd_notify client: exact datagrams on a real AF_UNIX socket, watchdog semantics and cadence."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from goipd.runtime import sdnotify
from goipd.runtime.sdnotify import Notifier, watchdog_loop


class Receiver:
    """The systemd side: a bound datagram socket, drained by a thread that timestamps each
    datagram on arrival, so gaps are measured even while the test's event loop is blocked."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data))

    def messages(self, timeout: float = 1.0, count: int = 1) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return [data for _, data in self.received]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    rx = Receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield rx
    rx.close()


def test_ready_status_stopping_watchdog_datagrams(receiver: Receiver) -> None:
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("polling 3 servers, 24 lines up")
    assert notifier.stopping()
    assert notifier.watchdog()
    assert notifier.ready(status="reloaded")
    assert receiver.messages(count=5) == [
        b"READY=1",
        b"STATUS=polling 3 servers, 24 lines up",
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"READY=1\nSTATUS=reloaded",
    ]
    notifier.close()


def test_reloading_carries_monotonic_usec(receiver: Receiver) -> None:
    notifier = Notifier.from_env()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = receiver.messages()
    first, second = message.split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_generic_notify_keeps_order_and_one_line_values(receiver: Receiver) -> None:
    notifier = Notifier.from_env()
    assert notifier.notify(STATUS="line one\nWATCHDOG=1", ERRNO=5, READY=True)
    assert notifier.extend_timeout(2.5)
    assert receiver.messages(count=2) == [
        # The newline would have smuggled in a second assignment.
        b"STATUS=line one WATCHDOG=1\nERRNO=5\nREADY=1",
        b"EXTEND_TIMEOUT_USEC=2500000",
    ]
    with pytest.raises(ValueError, match="upper-case"):
        notifier.notify(status="x")
    assert not notifier.notify()
    notifier.close()


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"goipd-test-{uuid.uuid4().hex}"
    rx = Receiver(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        notifier = Notifier.from_env()
        assert notifier.ready()
        assert rx.messages() == [b"READY=1"]
        assert repr(notifier).startswith(f"Notifier(socket='@{name}'")
        notifier.close()
    finally:
        rx.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_usec == 30_000_000
    assert Notifier.from_env(env).watchdog_interval == 15.0
    own_pid = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(own_pid).watchdog_interval == 15.0


@pytest.mark.parametrize(
    "extra",
    [
        # Inherited from a parent that systemd supervises: not our watchdog.
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {},
    ],
)
def test_watchdog_disabled(extra: dict[str, str]) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", **extra})
    assert notifier.watchdog_interval is None
    assert notifier.watchdog_usec is None


def test_watchdog_needs_a_socket() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval is None


def test_unset_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env(unset_environment=True)
    assert notifier.enabled
    assert notifier.watchdog_interval == 0.5
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    for call in (notifier.ready, notifier.reloading, notifier.stopping, notifier.watchdog):
        assert call() is False
    assert notifier.status("x") is False
    notifier.close()


@pytest.mark.parametrize("address", ["relative/path.sock", "vsock:2:1234"])
def test_unsupported_address_is_a_noop(address: str) -> None:
    notifier = Notifier(address)
    assert not notifier.enabled
    assert notifier.ready() is False


def test_missing_socket_path_never_raises_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[tuple[str, dict[str, object]]] = []

    class FakeLog:
        def warning(self, event: str, **kw: object) -> None:
            warnings.append((event, kw))

    monkeypatch.setattr(sdnotify, "log", FakeLog())
    path = tmp_path / "gone.sock"
    notifier = Notifier(str(path))
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert [event for event, _ in warnings] == ["notify_failed"]
    assert warnings[0][1]["socket"] == str(path)

    # Once the socket is back, sends work and a later outage is reported again.
    rx = Receiver(str(path))
    try:
        assert notifier.watchdog() is True
        assert rx.messages() == [b"WATCHDOG=1"]
    finally:
        rx.close()
    path.unlink()
    assert notifier.watchdog() is False
    assert [event for event, _ in warnings] == ["notify_failed", "notify_failed"]
    notifier.close()


def test_full_receiver_does_not_block(tmp_path: Path) -> None:
    # Nobody reads this socket: once its queue is full, sends fail fast (EAGAIN), not hang.
    path = tmp_path / "full.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    try:
        notifier = Notifier(str(path))
        started = time.monotonic()
        results = [notifier.status("x" * 1000) for _ in range(2000)]
        assert time.monotonic() - started < 2
        assert results[0] is True
        assert results[-1] is False
        notifier.close()
    finally:
        sink.close()


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_watchdog_loop_cadence_and_blocked_loop(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval == pytest.approx(0.1)
    task = asyncio.create_task(watchdog_loop(notifier))
    try:
        await asyncio.sleep(0.55)
        healthy = [t for t, _ in receiver.received]
        assert {data for _, data in receiver.received} == {b"WATCHDOG=1"}
        assert 5 <= len(healthy) <= 7, healthy
        assert all(0.07 <= gap <= 0.2 for gap in _gaps(healthy)), _gaps(healthy)

        # A coroutine that blocks the event loop: no ping may go out meanwhile.
        blocked_at = time.monotonic()
        time.sleep(0.6)  # blocking the loop is the point of this test
        unblocked_at = time.monotonic()
        await asyncio.sleep(0.25)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    times = [t for t, _ in receiver.received]
    assert not [t for t in times if blocked_at + 0.01 < t < unblocked_at]
    assert max(_gaps(times)) >= 0.6
    # Pings resume after the block.
    assert [t for t in times if t >= unblocked_at]
    notifier.close()


async def test_watchdog_loop_withholds_pings_while_unhealthy(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 0.05 s
    notifier = Notifier.from_env()
    state: dict[str, bool | None] = {"healthy": True}

    def is_healthy() -> bool:
        if state["healthy"] is None:
            raise RuntimeError("health check broke")
        return bool(state["healthy"])

    task = asyncio.create_task(watchdog_loop(notifier, is_healthy))
    try:
        await asyncio.sleep(0.2)
        assert receiver.received
        state["healthy"] = False
        await asyncio.sleep(0.06)
        unhealthy_from = time.monotonic()
        await asyncio.sleep(0.2)
        state["healthy"] = None
        await asyncio.sleep(0.2)
        unhealthy_until = time.monotonic()
        state["healthy"] = True
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    times = [t for t, _ in receiver.received]
    assert not [t for t in times if unhealthy_from < t < unhealthy_until]
    assert [t for t in times if t > unhealthy_until]
    notifier.close()


async def test_watchdog_loop_returns_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    await asyncio.wait_for(watchdog_loop(Notifier.from_env()), timeout=1)
    await asyncio.wait_for(watchdog_loop(Notifier("/run/x")), timeout=1)
