"""A worker loop's doorbell: sleep until there may be work, or until a timeout."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Return when rung (also if rung since the last sleep) or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()
