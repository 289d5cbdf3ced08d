"""Cloud delivery reports held until their send is recorded, and when failed hand-overs of
scheduled cloud sends may be tried again (goipd/reports/cloud.py, goipd/dispatch/dispatcher.py).
On SQLite: the `HeldStore` role of goipd/ledger/base.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from goipd.ledger.held import HeldKey, HeldReport
from goipd.ledger.rows import storable
from goipd.model import State

T = TypeVar("T")
HELD_COLUMNS = "provider, upstream_id, number, state, code, meaning, held_at, next_try, wait"
LIVE_STATES = "('queued', 'dispatching')"
"""A recipient whose hand-over retry time may still be of use is in one of these."""


def held_from_row(row: Sequence[Any]) -> HeldReport:
    """A row of HELD_COLUMNS; the number of a report that named none is stored as ''."""
    provider, upstream_id, number, state, code, meaning, held_at, next_try, wait = row
    return HeldReport(
        str(provider),
        str(upstream_id),
        str(number) or None,
        State(state),
        str(code),
        str(meaning),
        float(held_at),
        float(next_try),
        float(wait),
    )


def held_key(key: HeldKey) -> tuple[str, str, str]:
    """A key as stored (no NUL, '' for no number)."""
    provider, upstream_id, number = key
    return storable(provider), storable(upstream_id), storable(number or "")


def held_values(report: HeldReport) -> tuple[str, str, str, str, str, str, float, float, float]:
    return (
        *held_key(report.key),
        report.state.value,
        storable(report.code),
        storable(report.meaning),
        report.held_at,
        report.next_try,
        report.wait,
    )


class SqliteHeldStore:
    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def hold_report(self, report: HeldReport, limit: int) -> tuple[bool, list[HeldReport]]:
        values = held_values(report)

        def op(conn: sqlite3.Connection) -> tuple[bool, list[HeldReport]]:
            updated = conn.execute(
                "UPDATE held_reports SET state = ?, code = ?, meaning = ?"
                " WHERE provider = ? AND upstream_id = ? AND number = ?",
                (*values[3:6], *values[:3]),
            ).rowcount
            if updated:
                return False, []
            conn.execute(
                f"INSERT INTO held_reports ({HELD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            # The newest `limit` stay: the oldest is the least likely ever to match (a send
            # goipd did not make).
            dropped = conn.execute(
                "DELETE FROM held_reports WHERE rowid IN (SELECT rowid FROM held_reports"
                " ORDER BY held_at DESC, rowid DESC LIMIT -1 OFFSET ?)"
                f" RETURNING {HELD_COLUMNS}",
                (max(limit, 1),),
            ).fetchall()
            return True, [held_from_row(row) for row in dropped]

        return await self._write(op)

    async def held_reports_summary(self) -> tuple[int, float | None, float | None]:
        def op(conn: sqlite3.Connection) -> tuple[int, float | None, float | None]:
            count, next_try, held_at = conn.execute(
                "SELECT count(*), min(next_try), min(held_at) FROM held_reports"
            ).fetchone()
            return int(count), next_try, held_at

        return await self._read(op)

    async def take_held_reports(
        self, now: float, keep_for: float, take_for: float, limit: int
    ) -> tuple[list[HeldReport], list[HeldReport]]:
        def op(conn: sqlite3.Connection) -> tuple[list[HeldReport], list[HeldReport]]:
            expired = conn.execute(
                f"DELETE FROM held_reports WHERE held_at < ? RETURNING {HELD_COLUMNS}",
                (now - keep_for,),
            ).fetchall()
            taken = conn.execute(
                "UPDATE held_reports SET next_try = ? WHERE rowid IN (SELECT rowid FROM"
                " held_reports WHERE next_try <= ? ORDER BY next_try LIMIT ?)"
                f" RETURNING {HELD_COLUMNS}",
                (now + take_for, now, limit),
            ).fetchall()
            return [held_from_row(row) for row in taken], [held_from_row(row) for row in expired]

        return await self._write(op)

    async def settle_held_reports(
        self, matched: Collection[HeldKey], again: Sequence[tuple[HeldKey, float, float]]
    ) -> None:
        gone = [held_key(key) for key in matched]
        later = [(next_try, wait, *held_key(key)) for key, next_try, wait in again]
        if not gone and not later:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM held_reports WHERE provider = ? AND upstream_id = ? AND number = ?",
                gone,
            )
            conn.executemany(
                "UPDATE held_reports SET next_try = ?, wait = ?"
                " WHERE provider = ? AND upstream_id = ? AND number = ?",
                later,
            )

        await self._write(op)

    async def handover_retries(
        self, recipient_ids: Collection[int]
    ) -> dict[int, tuple[int, float]]:
        ids = list(recipient_ids)
        if not ids:
            return {}

        def op(conn: sqlite3.Connection) -> dict[int, tuple[int, float]]:
            found: dict[int, tuple[int, float]] = {}
            # Chunks within SQLite's limit on bound parameters.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for rid, attempts, retry_at in conn.execute(
                    "SELECT recipient_id, attempts, retry_at FROM handover_retries"
                    f" WHERE recipient_id IN ({marks})",
                    chunk,
                ):
                    found[int(rid)] = (int(attempts), float(retry_at))
            return found

        return await self._read(op)

    async def set_handover_retries(
        self, retries: Mapping[int, tuple[int, float]], now: float, keep_for: float, limit: int
    ) -> None:
        rows = [(rid, attempts, retry_at) for rid, (attempts, retry_at) in sorted(retries.items())]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO handover_retries (recipient_id, attempts, retry_at) VALUES (?, ?, ?)"
                " ON CONFLICT (recipient_id) DO UPDATE SET attempts = excluded.attempts,"
                " retry_at = excluded.retry_at",
                rows,
            )
            _prune_handover_retries(conn, now, keep_for, limit)

        await self._write(op)

    async def clear_handover_retries(self, recipient_ids: Collection[int]) -> None:
        ids = [(rid,) for rid in sorted(recipient_ids)]
        if not ids:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM handover_retries WHERE recipient_id = ?", ids)

        await self._write(op)


def _prune_handover_retries(
    conn: sqlite3.Connection, now: float, keep_for: float, limit: int
) -> None:
    # Only passed retry times are looked at (the index on retry_at): a row that is void is
    # harmless until then, and a failed hand-over's own row is never passed when it is written.
    conn.execute(
        "DELETE FROM handover_retries WHERE retry_at < ? AND (retry_at < ? OR NOT EXISTS ("
        "SELECT 1 FROM recipients r WHERE r.id = handover_retries.recipient_id"
        f" AND r.attempts = handover_retries.attempts AND r.state IN {LIVE_STATES}))",
        (now, now - keep_for),
    )
    conn.execute(
        "DELETE FROM handover_retries WHERE recipient_id IN (SELECT recipient_id FROM"
        " handover_retries ORDER BY retry_at DESC, recipient_id DESC LIMIT -1 OFFSET ?)",
        (max(limit, 0),),
    )
