"""The doorbell of worker loops."""

from __future__ import annotations

import asyncio

import pytest

from goipd.runtime.wakeup import Wakeup


async def test_a_ring_wakes_and_a_timeout_passes() -> None:
    wake = Wakeup()
    wake.ring()
    await asyncio.wait_for(wake.sleep(10), 1)  # rung before: returns at once
    await wake.sleep(0.01)  # not rung since: the timeout passes


async def test_a_cancel_that_comes_with_a_ring_still_cancels() -> None:
    # With asyncio.wait_for (Python 3.11) the ring won and the cancel was lost: a stopping
    # worker kept looping, and whatever waited for it to stop waited for ever.
    wake = Wakeup()
    sleeper = asyncio.create_task(wake.sleep(10))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    wake.ring()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
