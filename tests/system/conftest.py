"""Fixtures of the whole-process tests: the smsgo, PaaSoo and c123 simulators, and goipd
processes killed after the test whatever happened."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from goipd.sim.c123 import start_c123_sim
from goipd.sim.paasoo import start_paasoo_sim
from goipd.sim.smsgo import start_smsgo_sim
from tests.helpers.cloud import Clouds
from tests.helpers.processes import Goipd


@pytest.fixture
async def clouds() -> AsyncIterator[Clouds]:
    smsgo = await start_smsgo_sim()
    paasoo = await start_paasoo_sim()
    c123 = await start_c123_sim(rx_min_interval=0.0)
    yield Clouds(smsgo, paasoo, c123)
    for sim in (smsgo, paasoo, c123):
        await sim.close()


@pytest.fixture
async def started() -> AsyncIterator[list[Goipd]]:
    """The goipd processes a test starts (append them): each is killed at the end if alive."""
    processes: list[Goipd] = []
    yield processes
    for process in processes:
        process.ensure_dead()
