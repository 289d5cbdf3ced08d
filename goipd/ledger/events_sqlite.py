"""Status callback events (goipd/callbacks/): written by a trigger on recipients in the
transaction that changes a state (goipd/ledger/migrations.py 9), taken, delivered and settled
here. On SQLite: the `StatusEvents` role of goipd/ledger/base.py.

A taken event is claimed by this instance until `claimed_until`; one whose claim ran out (its
process died mid-delivery) is taken again: delivery is at least once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, TypeVar

from goipd.ledger.events import EVENT_COLUMNS, StatusEvent, event_from_row

T = TypeVar("T")
UNCLAIMED = " AND (claimed_until IS NULL OR claimed_until <= {})"
"""Not being delivered: an event claimed until later is settled by its delivery, not dropped
under it (which would count it twice)."""


class SqliteStatusEvents:
    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def take_status_events(
        self,
        now: float,
        claim_for: float,
        limit: int,
        per_receiver: int,
        skip_receivers: Collection[str] = (),
    ) -> list[StatusEvent]:
        skip = json.dumps(sorted(skip_receivers))

        def op(conn: sqlite3.Connection) -> list[StatusEvent]:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM (SELECT *, row_number() OVER"
                " (PARTITION BY receiver ORDER BY next_at, id) AS nth FROM status_events"
                " WHERE next_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?)"
                " AND receiver NOT IN (SELECT value FROM json_each(?)))"
                " WHERE nth <= ? ORDER BY next_at, id LIMIT ?",
                (now, now, skip, per_receiver, limit),
            ).fetchall()
            events = [event_from_row(row) for row in rows]
            conn.executemany(
                "UPDATE status_events SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                [(self.instance_id, now + claim_for, e.id) for e in events],
            )
            return events

        return await self._write(op)

    async def settle_status_events(
        self, finished: Collection[int], retries: Sequence[tuple[int, float, str]] = ()
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM status_events WHERE id = ?", [(i,) for i in finished])
            conn.executemany(
                "UPDATE status_events SET attempts = attempts + 1, next_at = ?, last_error = ?,"
                " claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                [(next_at, error[:200], event_id) for event_id, next_at, error in retries],
            )

        await self._write(op)

    async def release_status_events(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE status_events SET claimed_by = NULL, claimed_until = NULL"
                " WHERE claimed_by = ?",
                (self.instance_id,),
            ).rowcount

        return await self._write(op)

    async def expire_status_events(self, before: float, now: float) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            counts = dict(
                conn.execute(
                    "SELECT receiver, count(*) FROM status_events WHERE at < ?"
                    + UNCLAIMED.format("?")
                    + " GROUP BY receiver",
                    (before, now),
                ).fetchall()
            )
            if counts:
                conn.execute(
                    "DELETE FROM status_events WHERE at < ?" + UNCLAIMED.format("?"),
                    (before, now),
                )
            return counts

        return await self._write(op)

    async def cap_status_events(self, per_receiver: int, now: float) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            over = conn.execute(
                "SELECT receiver, count(*) - ? FROM status_events GROUP BY receiver"
                " HAVING count(*) > ?",
                (per_receiver, per_receiver),
            ).fetchall()
            dropped: dict[str, int] = {}
            for receiver, excess in over:
                cursor = conn.execute(
                    "DELETE FROM status_events WHERE id IN (SELECT id FROM status_events"
                    " WHERE receiver = ?" + UNCLAIMED.format("?") + " ORDER BY id LIMIT ?)",
                    (receiver, now, excess),
                )
                if cursor.rowcount:
                    dropped[str(receiver)] = cursor.rowcount
            return dropped

        return await self._write(op)

    async def status_events_pending(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT receiver, count(*) FROM status_events GROUP BY receiver"
            ).fetchall()
            return {str(receiver): int(count) for receiver, count in rows}

        return await self._read(op)
