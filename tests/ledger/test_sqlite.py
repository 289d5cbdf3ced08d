"""What only the SQLite ledger does: an unusable path, write errors and recovering from them, a
read-only file, a full disk, and a SIGKILLed writer that loses no accepted message."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from goipd.ledger.sqlite import SqliteLedger
from goipd.model import LedgerError, State
from tests.helpers.disks import fill
from tests.helpers.ledgers import NOW, new
from tests.helpers.repo import REPO


async def test_sqlite_unusable_path_is_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SqliteLedger(tmp_path / "file" / "goipd.db")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        await store.open()
    (tmp_path / "garbage.db").write_bytes(b"this is not an SQLite database" * 100)
    store = SqliteLedger(tmp_path / "garbage.db")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        await store.open()


async def test_sqlite_write_errors_become_ledger_errors_and_the_ledger_recovers(
    tmp_path: Path,
) -> None:
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    # Works without privileges: the writer connection itself refuses writes, the same
    # sqlite3.OperationalError path as a read-only file (see the chattr test for the real one).
    writer, pool = store._writer, store._writer_pool
    assert writer is not None and pool is not None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pool, writer.execute, "PRAGMA query_only=ON")
    results = await asyncio.gather(
        *(store.accept(new((f"+8869123{i:05d}",), text="secret"), NOW) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, LedgerError) for r in results)
    assert "readonly" in str(results[0])
    assert "secret" not in str(results[0]) and "+886" not in str(results[0])
    await loop.run_in_executor(pool, writer.execute, "PRAGMA query_only=OFF")
    assert (await store.accept(new(), NOW)).created
    assert (await store.counts())[State.QUEUED] == 1
    await store.close()


async def test_sqlite_write_error_is_reported_until_a_write_commits(tmp_path: Path) -> None:
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    try:
        writer, pool = store._writer, store._writer_pool
        assert writer is not None and pool is not None
        loop = asyncio.get_running_loop()
        assert store.write_error is None and await store.check_writes() is None
        await loop.run_in_executor(pool, writer.execute, "PRAGMA query_only=ON")
        with pytest.raises(LedgerError):
            await store.accept(new(), NOW)
        assert store.write_error is not None and "readonly" in store.write_error
        # The probe is a real write: it fails as long as writes do.
        assert await store.check_writes() is not None
        await loop.run_in_executor(pool, writer.execute, "PRAGMA query_only=OFF")
        assert await store.check_writes() is None  # no caller's write needed
        assert store.write_error is None
        assert (await store.counts())[State.QUEUED] == 0
    finally:
        await store.close()


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[bool], None]]:
    """chattr +i: even root cannot write the file, through descriptors already open too."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux for chattr")
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("chattr +i not supported here")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    files: list[Path] = []

    def set_immutable(on: bool) -> None:
        for path in files:
            if path.exists():
                subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)

    db = tmp_path / "goipd.db"
    # Not the -shm file: SQLite writes it through mmap, and an immutable mapping is SIGBUS.
    files.extend([db, Path(f"{db}-wal")])
    try:
        yield set_immutable
    finally:
        set_immutable(False)  # or pytest cannot remove tmp_path


async def test_sqlite_read_only_file_fails_writes_and_recovers(
    tmp_path: Path, immutable: Callable[[bool], None]
) -> None:
    store = SqliteLedger(tmp_path / "goipd.db")
    await store.open()
    try:
        kept = (await store.accept(new(), NOW)).message
        immutable(True)
        big = tuple(f"+8869{i:08d}" for i in range(2000))
        with pytest.raises(LedgerError) as caught:
            await store.accept(new(big, text="private words"), NOW)
        assert "private" not in str(caught.value) and "+8869" not in str(caught.value)
        assert await store.get_message(kept.id) == kept  # reads still work
        immutable(False)
        assert (await store.accept(new(), NOW)).created
        assert (await store.counts())[State.QUEUED] == 2
    finally:
        immutable(False)
        await store.close()


async def test_sqlite_full_disk_fails_the_batch_and_recovers_when_space_returns(
    small_disk: Path,
) -> None:
    store = SqliteLedger(small_disk / "state" / "goipd.db")
    await store.open()
    try:
        kept = (await store.accept(new(), NOW)).message
        fill(small_disk / "filler")
        big = tuple(f"+8869{i:08d}" for i in range(3000))
        with pytest.raises(LedgerError, match="full") as caught:
            await store.accept(new(big, text="private words"), NOW)
        assert "private" not in str(caught.value) and "+8869" not in str(caught.value)
        assert await store.get_message(kept.id) == kept
        (small_disk / "filler").unlink()
        again = await store.accept(new(big), NOW)
        assert again.created and len(again.message.recipients) == 3000
        assert (await store.counts())[State.QUEUED] == 3001
    finally:
        await store.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from goipd.model import NewMessage
    from goipd.ledger.sqlite import SqliteLedger

    async def main() -> None:
        ledger = SqliteLedger(Path(sys.argv[1]))
        await ledger.open()

        async def client(c: int) -> None:
            for i in range(10**9):
                message = NewMessage(
                    text=f"crash {c} {i}", recipients=(f"+88690{c:02d}{i:05d}",),
                    segments=1, encoding="GSM-7", idempotency_key=f"{c}-{i}",
                )
                result = await ledger.accept(message, time.time())
                # Printed only once accept has returned: the 202 moment.
                sys.stdout.write(f"ACCEPTED {result.message.id}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(client(c) for c in range(16)))

    asyncio.run(main())
    """
)


def test_sqlite_sigkill_loses_no_accepted_message(tmp_path: Path) -> None:
    path = tmp_path / "goipd.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
        text=True,
    )
    assert child.stdout is not None
    accepted: list[str] = []
    try:
        while len(accepted) < 400:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"child exited early with {child.wait()}")
            if line.startswith("ACCEPTED "):
                accepted.append(line.split()[1])
        child.send_signal(signal.SIGKILL)
        child.wait()
        # What was printed before the kill but not yet read counts too.
        for line in child.stdout.read().splitlines():
            if line.startswith("ACCEPTED ") and len(line.split()) == 2:
                accepted.append(line.split()[1])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()

    async def check() -> int:
        store = SqliteLedger(path)
        await store.open()
        try:
            for message_id in accepted:
                message = await store.get_message(message_id)
                assert message is not None, "an accepted message was lost"
                assert message.recipients[0].state is State.QUEUED
            return sum((await store.counts()).values())
        finally:
            await store.close()

    stored = asyncio.run(check())
    assert stored >= len(accepted) >= 400
