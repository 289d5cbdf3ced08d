"""Routing decisions every instance on the ledger shares: quarantines after line errors and
providers disabled after credential or credit refusals. On SQLite: the `SharedRouting` role of
goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")


class SqliteSharedRouting:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
