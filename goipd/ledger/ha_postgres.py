"""Leases, fleet snapshots and claim take-over on PostgreSQL (the `Ledger` methods for several
instances, see goipd/fleet/ha.py).

Lease expiry is decided by the database's clock, never an instance's: two hosts whose clocks
disagree still agree on who holds a lease. Each lease statement is one atomic upsert
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE expired OR ours`): of two instances asking for the
same free lease at once, the second waits for the first's row and then finds it taken. Leases
and snapshots are written on a pool connection in their own short transaction, so a renewal
never waits behind a large group commit of accepts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from goipd.ledger.line_rate import (
    HORIZON_MINUTES,
    LineReservation,
    grant,
    minute_bucket,
    quota_grant,
    quota_since,
)
from goipd.ledger.rows import RECIPIENT_COLUMNS, recipient_from_row
from goipd.model import FleetSnapshot, Recipient

T = TypeVar("T")
DB_NOW = "extract(epoch from clock_timestamp())::float8"
TASK_WINDOW_ROWS = 256
"""Recipients looked at on each side of a window in task_id_bounds: several per task."""
NUMERIC_TASK = "task_id ~ '^[0-9]{1,18}$'"


class PostgresCoordination:
    _line_sends_pruned = 0
    """The minute bucket up to which old line_sends rows were deleted."""

    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def _recipients(self, condition: str, *args: Any) -> list[Recipient]:
        """The recipients `WHERE condition` (with its ORDER BY and LIMIT), on a reader."""

        async def op(conn: asyncpg.Connection) -> list[Recipient]:
            rows = await conn.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE {condition}", *args
            )
            return [recipient_from_row(row) for row in rows]

        return await self._read(op)

    async def acquire_leases(self, wanted: Mapping[str, float]) -> set[str]:
        names, ttls = list(wanted), list(wanted.values())

        async def op(conn: asyncpg.Connection) -> set[str]:
            rows = await conn.fetch(
                "INSERT INTO leases (name, owner, acquired_at, expires_at)"
                f" SELECT w.name, $1, {DB_NOW}, {DB_NOW} + w.ttl"
                " FROM unnest($2::text[], $3::float8[]) AS w(name, ttl)"
                " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,"
                " expires_at = EXCLUDED.expires_at, acquired_at = CASE"
                " WHEN leases.owner = EXCLUDED.owner THEN leases.acquired_at"
                " ELSE EXCLUDED.acquired_at END"
                f" WHERE leases.owner = EXCLUDED.owner OR leases.expires_at < {DB_NOW}"
                " RETURNING name",
                self.instance_id,
                names,
                ttls,
            )
            return {row[0] for row in rows}

        return await self._read(op)  # a pool connection, see the module docstring

    async def release_leases(self, names: Collection[str]) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM leases WHERE owner = $1 AND name = ANY($2::text[])",
                self.instance_id,
                list(names),
            )

        await self._read(op)

    async def put_fleet_snapshot(self, server: str, lease: str, body: str, now: float) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            version = await conn.fetchval(
                "INSERT INTO fleet_snapshots (server, owner, version, taken_at, body)"
                " SELECT $1, $2, 1, $3, $4 WHERE EXISTS (SELECT 1 FROM leases WHERE name = $5"
                f" AND owner = $2 AND expires_at >= {DB_NOW})"
                " ON CONFLICT (server) DO UPDATE SET owner = EXCLUDED.owner,"
                " version = fleet_snapshots.version + 1, taken_at = EXCLUDED.taken_at,"
                " body = EXCLUDED.body RETURNING version",
                server,
                self.instance_id,
                now,
                body,
                lease,
            )
            return version is not None

        return await self._read(op)

    async def fleet_snapshots(self, known: Mapping[str, int]) -> list[FleetSnapshot]:
        async def op(conn: asyncpg.Connection) -> list[FleetSnapshot]:
            rows = await conn.fetch(
                "SELECT s.server, s.owner, s.version, s.taken_at, s.body FROM fleet_snapshots s"
                " JOIN unnest($1::text[], $2::bigint[]) AS k(server, version)"
                " ON k.server = s.server WHERE k.version <> s.version",
                list(known),
                list(known.values()),
            )
            return [FleetSnapshot(*row) for row in rows]

        return await self._read(op)

    async def take_stale_claims(self, own_older_than: float, limit: int) -> list[Recipient]:
        async def op(conn: asyncpg.Connection) -> list[Recipient]:
            # SKIP LOCKED: two instances sweeping at once take disjoint sets of claims.
            rows = await conn.fetch(
                "WITH stale AS (SELECT r.id AS stale_id FROM recipients r"
                " WHERE r.state = 'dispatching' AND ("
                "  (r.claimed_by = $1 AND r.updated_at < $2) OR"
                "  (r.claimed_by IS DISTINCT FROM $1 AND NOT EXISTS (SELECT 1 FROM leases l"
                f"   WHERE l.name = 'instance:' || r.claimed_by AND l.expires_at >= {DB_NOW})))"
                " ORDER BY r.updated_at, r.id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " UPDATE recipients SET claimed_by = $1 FROM stale WHERE id = stale.stale_id"
                f" RETURNING {RECIPIENT_COLUMNS}",
                self.instance_id,
                own_older_than,
                limit,
            )
            return sorted((recipient_from_row(row) for row in rows), key=_claim_order)

        return await self._write(op)

    async def submitted_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        return await self._recipients(
            "state = 'submitted' "
            "AND updated_at < $1 AND server = ANY($2::text[]) ORDER BY updated_at, id LIMIT $3",
            older_than,
            list(servers),
            limit,
        )

    async def submitted_not_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        return await self._recipients(
            "state = 'submitted'"
            " AND updated_at < $1 AND route = 'goip' AND server IS NOT NULL"
            " AND server <> ALL($2::text[]) ORDER BY updated_at, id LIMIT $3",
            older_than,
            list(servers),
            limit,
        )

    async def task_id_bounds(
        self, server: str, before: float, after: float
    ) -> tuple[int | None, int | None]:
        async def op(conn: asyncpg.Connection) -> tuple[int | None, int | None]:
            low = await conn.fetchval(
                "SELECT MAX(t) FROM (SELECT task_id::bigint AS t FROM recipients"
                f" WHERE server = $1 AND task_id IS NOT NULL AND {NUMERIC_TASK}"
                " AND submitted_at < $2 ORDER BY submitted_at DESC LIMIT $3) AS w",
                server,
                before,
                TASK_WINDOW_ROWS,
            )
            high = await conn.fetchval(
                "SELECT MIN(t) FROM (SELECT task_id::bigint AS t FROM recipients"
                f" WHERE server = $1 AND task_id IS NOT NULL AND {NUMERIC_TASK}"
                " AND submitted_at > $2 ORDER BY submitted_at LIMIT $3) AS w",
                server,
                after,
                TASK_WINDOW_ROWS,
            )
            return (
                int(low) if low is not None else None,
                int(high) if high is not None else None,
            )

        return await self._read(op)

    async def recorded_task_ids(self, server: str, first: int, stop: int) -> set[int]:
        async def op(conn: asyncpg.Connection) -> set[int]:
            # Same expression and condition as the recipients_task_number index.
            rows = await conn.fetch(
                "SELECT DISTINCT task_id::bigint FROM recipients WHERE server = $1"
                f" AND {NUMERIC_TASK} AND task_id::bigint >= $2 AND task_id::bigint < $3",
                server,
                first,
                stop,
            )
            return {int(row[0]) for row in rows}

        return await self._read(op)

    async def reserve_line_sends(
        self,
        wanted: Mapping[tuple[str, str], int],
        per_minute: int,
        quotas: Mapping[tuple[str, str], tuple[int, float]] | None = None,
    ) -> LineReservation:
        quotas = quotas or {}
        keys = sorted(wanted)  # one lock order for every instance: no deadlock
        servers, lines = [k[0] for k in keys], [k[1] for k in keys]
        oldest_poll = min((quotas[k][1] for k in keys if k in quotas), default=None)

        async def op(conn: asyncpg.Connection) -> LineReservation:
            async with conn.transaction():
                minute, weight = minute_bucket(float(await conn.fetchval(f"SELECT {DB_NOW}")))
                await conn.execute(
                    "INSERT INTO line_sends (server, line, minute, sends)"
                    " SELECT k.server, k.line, $3, 0"
                    " FROM unnest($1::text[], $2::text[]) AS k(server, line)"
                    " ON CONFLICT DO NOTHING",
                    servers,
                    lines,
                    minute,
                )
                since = minute - 1
                if oldest_poll is not None:
                    since = max(min(since, quota_since(oldest_poll)), minute - HORIZON_MINUTES)
                # The lines' rows locked: instances reserving on one line take turns.
                rows = await conn.fetch(
                    "SELECT s.server, s.line, s.minute, s.sends FROM line_sends s"
                    " JOIN unnest($1::text[], $2::text[]) AS k(server, line)"
                    " ON k.server = s.server AND k.line = s.line WHERE s.minute >= $3"
                    " ORDER BY s.server, s.line, s.minute FOR UPDATE OF s",
                    servers,
                    lines,
                    since,
                )
                counts: dict[tuple[str, str], dict[int, int]] = {}
                for server, line, bucket, sends in rows:
                    counts.setdefault((server, line), {})[int(bucket)] = int(sends)
                granted = {}
                for key in keys:
                    n = grant(counts.get(key, {}), minute, weight, wanted[key], per_minute)
                    if key in quotas:
                        n = min(n, quota_grant(counts.get(key, {}), minute, quotas[key]))
                    granted[key] = n
                await conn.execute(
                    "UPDATE line_sends SET sends = sends + g.n"
                    " FROM unnest($1::text[], $2::text[], $3::int[]) AS g(server, line, n)"
                    " WHERE line_sends.server = g.server AND line_sends.line = g.line"
                    " AND line_sends.minute = $4 AND g.n > 0",
                    servers,
                    lines,
                    [granted[key] for key in keys],
                    minute,
                )
            if minute != self._line_sends_pruned:
                # Outside the transaction above: a delete there could deadlock with another
                # instance's reservation.
                await conn.execute(
                    "DELETE FROM line_sends WHERE minute < $1", minute - HORIZON_MINUTES - 1
                )
                self._line_sends_pruned = minute
            return LineReservation(minute, granted)

        return await self._read(op)  # a pool connection: not queued behind a group commit

    async def release_line_sends(self, unused: Mapping[tuple[str, str], int], minute: int) -> None:
        keys = sorted(key for key, n in unused.items() if n > 0)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE line_sends SET sends = GREATEST(sends - g.n, 0)"
                " FROM unnest($1::text[], $2::text[], $3::int[]) AS g(server, line, n)"
                " WHERE line_sends.server = g.server AND line_sends.line = g.line"
                " AND line_sends.minute = $4",
                [k[0] for k in keys],
                [k[1] for k in keys],
                [unused[k] for k in keys],
                minute,
            )

        if keys:
            await self._read(op)


def _claim_order(recipient: Recipient) -> tuple[float, int]:
    return recipient.updated_at, recipient.id
