"""Small per-provider documents that outlive the process: c123's reply recovery plan
(goipd/clouds/reply_recovery.py). On PostgreSQL: the `ProviderDocuments` role of
goipd/ledger/base.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

T = TypeVar("T")


class PostgresProviderDocuments:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...
