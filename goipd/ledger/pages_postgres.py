"""Alertmanager notifications already paged, so a restart or another instance does not page again
(goipd/accept/alerts.py). On PostgreSQL: the `AlertPages` role of goipd/ledger/base.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

T = TypeVar("T")


class PostgresAlertPages:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...
