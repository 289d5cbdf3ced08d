"""Small per-provider documents that outlive the process: c123's reply recovery plan
(goipd/clouds/reply_recovery.py). On SQLite: the `ProviderDocuments` role of
goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")


class SqliteProviderDocuments:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
