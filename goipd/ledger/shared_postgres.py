"""Routing decisions every instance on the ledger shares: quarantines after line errors and
providers disabled after credential or credit refusals. On PostgreSQL: the `SharedRouting` role
of goipd/ledger/base.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

T = TypeVar("T")


class PostgresSharedRouting:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...
