"""Cloud delivery reports held until their send is recorded, and when failed hand-overs of
scheduled cloud sends may be tried again (goipd/reports/cloud.py, goipd/dispatch/dispatcher.py).
On SQLite: the `HeldStore` role of goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")


class SqliteHeldStore:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
