"""Background loops that outlive their own bugs.

A task created with asyncio.create_task that raises is simply done: nobody awaits it until
shut-down, so the exception surfaces (if at all) as a warning when the process ends, and that
function of the daemon (dispatching, forwarding, provider jobs) silently stops for the life of
the process. `supervised` logs the crash, counts it and starts the loop again after a pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Counter

log = structlog.get_logger("goipd.runtime.supervise")
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 60.0
"""A run that lasted this long before crashing starts the back-off over: it was not a loop
that fails at once every time."""


async def supervised(
    name: str,
    factory: Callable[[], Awaitable[None]],
    restarts: Counter,
    stopping: Callable[[], bool],
    *,
    backoff: float = FIRST_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Run `factory()` until it returns (a loop that ends on purpose) or is cancelled; when it
    raises, run it again after a back-off, unless the daemon is stopping."""
    delay = backoff
    # The series exists at 0 before a crash, so that the first one is an increase an alert sees.
    restarts.labels(name)
    while True:
        started = time.monotonic()
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if stopping():
                log.warning("task_crashed", task=name, restart=False, exc_info=True)
                return
            # The traceback is the only trace of a bug in a loop nobody awaits.
            log.error("task_crashed", task=name, restart_in=delay, exc_info=True)
            restarts.labels(name).inc()
        if time.monotonic() - started >= HEALTHY_AFTER:
            delay = backoff
        await asyncio.sleep(delay)
        if stopping():
            return
        log.info("task_restarted", task=name)
        delay = min(delay * 2, max_backoff)
