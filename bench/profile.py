"""`--profile DIR`: py-spy records goipd during each scenario's measured phase.

Sampling is `py-spy record --gil --nonblocking`: only the thread holding the GIL is sampled,
so the shares are shares of goipd's Python CPU time (SQLite's own C work and fsync release
the GIL and do not show). Figures of a profiled run are perturbed a little (py-spy runs on the
client core); use them for where the time goes, not for the results table.

Each profile is kept as py-spy's collapsed stacks (`NAME.raw`, for flame graph tools) and
summarised in `NAME.txt`: where the time goes by area, then the top frames by self and by
inclusive time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

THREAD_AREAS = {"ledger-write": "ledger writer thread", "ledger-read": "ledger reader thread"}
FRAME_AREAS: list[tuple[str, tuple[str, ...]]] = [
    (
        "thread hand-offs (executor, futures, self-pipe)",
        (
            "run_in_executor",
            "ThreadPoolExecutor.submit",
            "_chain_future",
            "wrap_future",
            "_copy_future_state",
            "_read_from_self",
            "_write_to_self",
            "call_soon_threadsafe",
        ),
    ),
    ("phone number parsing", ("phonenumbers/",)),
    ("/metrics rendering", ("prometheus_client/", "goipd/metrics/catalog.py")),
    ("logging", ("structlog/", "goipd/runtime/logs.py")),
    ("JSON encode/decode", ("json/",)),
    ("polling (APScheduler, poller, registry)", ("apscheduler/", "goipd/fleet/")),
    ("upstream HTTP client", ("goipd/upstream/", "aiohttp/client", "aiohttp/connector")),
    ("dispatcher", ("goipd/dispatch/dispatcher.py", "goipd/dispatch/routing.py")),
    ("ledger (event-loop side)", ("goipd/ledger/",)),
    ("goipd handlers and middlewares", ("goipd/",)),
    ("aiohttp (server, streams, helpers)", ("aiohttp/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
]
_PLUMBING = (
    "<module>",
    "_run_code",
    "_run_module_as_main",
    "main (goipd/cli/__init__.py)",
    "run (goipd/cli/run.py)",
    "run (asyncio/runners.py)",
    "Runner.run",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Thread._bootstrap",
    "Thread.run",
    "_worker (concurrent",
    "thread (",
)
_SITE = re.compile(r"\s*\(\S*?/(?:site-packages|lib/python3\.\d+|main)/")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _area(frames: list[str]) -> str:
    """The thread's area, else that of the innermost frame that has one."""
    for key, area in THREAD_AREAS.items():
        if key in frames[0]:
            return area
    for frame in reversed(frames[1:]):
        for area, keys in FRAME_AREAS:
            if any(key in frame for key in keys):
                return area
    return "other"


def _frame(raw: str) -> str:
    return re.sub(r":\d+\)$", ")", _SITE.sub(" (", raw))


def summarise(raw: Path, top: int = 25) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        names = [_frame(f) for f in frames]
        self_time[names[-1]] += count
        for name in set(names[1:]):
            if not name.startswith(_PLUMBING):
                inclusive[name] += count
        areas[_area(frames)] += count
    if not total:
        return "no samples\n"
    out = [f"{total} samples (GIL holder only)", "", "by area:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in areas.most_common()]
    out += ["", "top frames, self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    out += ["", "top frames, inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


@contextlib.asynccontextmanager
async def profiling(
    directory: Path | None, name: str, pid: int, cpus: frozenset[int]
) -> AsyncIterator[None]:
    """Record `pid` for the duration of the block when profiling is on (and py-spy exists)."""
    tool = py_spy() if directory is not None else None
    if directory is None or tool is None:
        if directory is not None:
            print("py-spy not found: pip install py-spy to profile", file=sys.stderr)
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{name}.raw"
    spy = subprocess.Popen(
        [
            *(tool, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"),
            *("--gil", "--nonblocking", "--threads", "--output", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with contextlib.suppress(OSError):
        os.sched_setaffinity(spy.pid, cpus)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        for _ in range(200):
            if spy.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            spy.kill()
        if raw.exists():
            summary = summarise(raw)
            (directory / f"{name}.txt").write_text(summary)
            print(f"-- profile {name} ({directory / name}.txt)")
            print("\n".join(summary.splitlines()[:22]))
