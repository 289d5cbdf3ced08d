"""Alertmanager notifications already paged, so a restart or another instance does not page again
(goipd/accept/alerts.py). On SQLite: the `AlertPages` role of goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")


class SqliteAlertPages:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
