"""Cloud delivery reports held until their send is recorded, and when failed hand-overs of
scheduled cloud sends may be tried again (goipd/reports/cloud.py, goipd/dispatch/dispatcher.py).
On PostgreSQL: the `HeldStore` role of goipd/ledger/base.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

T = TypeVar("T")


class PostgresHeldStore:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...
