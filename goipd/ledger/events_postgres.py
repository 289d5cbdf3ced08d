"""Status callback events on PostgreSQL: the `StatusEvents` role of goipd/ledger/base.py (see
goipd/ledger/events_sqlite.py).

Every instance delivers: an event is claimed with FOR UPDATE SKIP LOCKED, so of two instances
taking at once each gets other events, and no take waits for a row another holds. Claims are
stamped with the taking instance's clock: instances' clocks should agree to well within the
claim time (NTP); a skew only makes a claim end early or late, which at-least-once allows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from goipd.ledger.events import EVENT_COLUMNS, StatusEvent, event_from_row
from goipd.ledger.events_sqlite import UNCLAIMED

T = TypeVar("T")


class PostgresStatusEvents:
    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def take_status_events(
        self,
        now: float,
        claim_for: float,
        limit: int,
        per_receiver: int,
        skip_receivers: Collection[str] = (),
    ) -> list[StatusEvent]:
        async def op(conn: asyncpg.Connection) -> list[StatusEvent]:
            rows = await conn.fetch(
                "WITH picked AS (SELECT id FROM status_events WHERE id IN (SELECT id FROM"
                " (SELECT id, next_at, row_number() OVER (PARTITION BY receiver"
                " ORDER BY next_at, id) AS nth FROM status_events WHERE next_at <= $1"
                " AND (claimed_until IS NULL OR claimed_until <= $1)"
                " AND receiver <> ALL($2::text[])) ranked WHERE nth <= $3"
                " ORDER BY next_at, id LIMIT $4)"
                " AND (claimed_until IS NULL OR claimed_until <= $1) FOR UPDATE SKIP LOCKED)"
                " UPDATE status_events e SET claimed_by = $5, claimed_until = $6"
                f" FROM picked WHERE e.id = picked.id RETURNING"
                f" {', '.join('e.' + c.strip() for c in EVENT_COLUMNS.split(','))}",
                now,
                sorted(skip_receivers),
                per_receiver,
                limit,
                self.instance_id,
                now + claim_for,
            )
            return sorted((event_from_row(row) for row in rows), key=lambda e: e.id)

        return await self._write(op)

    async def settle_status_events(
        self, finished: Collection[int], retries: Sequence[tuple[int, float, str]] = ()
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            if finished:
                await conn.execute(
                    "DELETE FROM status_events WHERE id = ANY($1::bigint[])", sorted(finished)
                )
            if retries:
                await conn.executemany(
                    "UPDATE status_events SET attempts = attempts + 1, next_at = $2,"
                    " last_error = $3, claimed_by = NULL, claimed_until = NULL WHERE id = $1",
                    [(event_id, next_at, error[:200]) for event_id, next_at, error in retries],
                )

        await self._write(op)

    async def release_status_events(self) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                "UPDATE status_events SET claimed_by = NULL, claimed_until = NULL"
                " WHERE claimed_by = $1",
                self.instance_id,
            )
            return int(status.split()[-1])

        return await self._write(op)

    async def expire_status_events(self, before: float, now: float) -> dict[str, int]:
        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(
                "WITH gone AS (DELETE FROM status_events WHERE id IN (SELECT id FROM"
                " status_events WHERE at < $1"
                + UNCLAIMED.format("$2")
                + " FOR UPDATE SKIP LOCKED) RETURNING receiver)"
                " SELECT receiver, count(*) FROM gone GROUP BY receiver",
                before,
                now,
            )
            return {str(row[0]): int(row[1]) for row in rows}

        return await self._write(op)

    async def cap_status_events(self, per_receiver: int, now: float) -> dict[str, int]:
        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            over = await conn.fetch(
                "SELECT receiver, count(*) - $1 FROM status_events GROUP BY receiver"
                " HAVING count(*) > $1",
                per_receiver,
            )
            dropped: dict[str, int] = {}
            for receiver, excess in over:
                status = await conn.execute(
                    "DELETE FROM status_events WHERE id IN (SELECT id FROM status_events"
                    " WHERE receiver = $1"
                    + UNCLAIMED.format("$3")
                    + " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    receiver,
                    excess,
                    now,
                )
                count = int(status.split()[-1])
                if count:
                    dropped[str(receiver)] = count
            return dropped

        return await self._write(op)

    async def status_events_pending(self) -> dict[str, int]:
        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(
                "SELECT receiver, count(*) FROM status_events GROUP BY receiver"
            )
            return {str(row[0]): int(row[1]) for row in rows}

        return await self._read(op)
