"""Leases, fleet snapshots and claim take-over on SQLite (the `Ledger` methods for several
instances, see goipd/fleet/ha.py). One SQLite file has one goipd, which wins every lease; the code
path is the same as on PostgreSQL all the same, so a single instance behaves like one of many.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, TypeVar

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
CHUNK = 500
"""Bound on `IN (?, ...)` lists, well under SQLite's limit on host parameters."""
TASK_WINDOW_ROWS = 256
"""Recipients looked at on each side of a window in task_id_bounds: several per task."""


class SqliteCoordination:
    if TYPE_CHECKING:
        instance_id: str

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

    async def acquire_leases(self, wanted: Mapping[str, float]) -> set[str]:
        owner = self.instance_id

        def op(conn: sqlite3.Connection) -> set[str]:
            now = time.time()
            held = set()
            for name, ttl in wanted.items():
                row = conn.execute(
                    "INSERT INTO leases (name, owner, acquired_at, expires_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                    " expires_at = excluded.expires_at, acquired_at = CASE"
                    " WHEN leases.owner = excluded.owner THEN leases.acquired_at"
                    " ELSE excluded.acquired_at END"
                    " WHERE leases.owner = excluded.owner OR leases.expires_at < ?"
                    " RETURNING name",
                    (name, owner, now, now + ttl, now),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
            return held

        return await self._write(op)

    async def release_leases(self, names: Collection[str]) -> None:
        owner, wanted = self.instance_id, list(names)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM leases WHERE name = ? AND owner = ?", [(n, owner) for n in wanted]
            )

        await self._write(op)

    async def put_fleet_snapshot(self, server: str, lease: str, body: str, now: float) -> bool:
        owner = self.instance_id

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "INSERT INTO fleet_snapshots (server, owner, version, taken_at, body)"
                " SELECT ?, ?, 1, ?, ? WHERE EXISTS (SELECT 1 FROM leases WHERE name = ?"
                " AND owner = ? AND expires_at >= ?)"
                " ON CONFLICT (server) DO UPDATE SET owner = excluded.owner,"
                " version = fleet_snapshots.version + 1, taken_at = excluded.taken_at,"
                " body = excluded.body RETURNING version",
                (server, owner, now, body, lease, owner, time.time()),
            ).fetchone()
            return row is not None

        return await self._write(op)

    async def fleet_snapshots(self, known: Mapping[str, int]) -> list[FleetSnapshot]:
        servers = list(known)

        def op(conn: sqlite3.Connection) -> list[FleetSnapshot]:
            found: list[FleetSnapshot] = []
            for start in range(0, len(servers), CHUNK):
                part = servers[start : start + CHUNK]
                # Versions first, bodies only of what changed: most reads find nothing new.
                changed = [
                    name
                    for name, version in conn.execute(
                        "SELECT server, version FROM fleet_snapshots WHERE server IN "
                        f"({','.join('?' * len(part))})",
                        part,
                    )
                    if version != known[name]
                ]
                if changed:
                    found.extend(
                        FleetSnapshot(*row)
                        for row in conn.execute(
                            "SELECT server, owner, version, taken_at, body FROM fleet_snapshots"
                            f" WHERE server IN ({','.join('?' * len(changed))})",
                            changed,
                        )
                    )
            return found

        return await self._read(op)

    async def take_stale_claims(self, own_older_than: float, limit: int) -> list[Recipient]:
        owner = self.instance_id

        def op(conn: sqlite3.Connection) -> list[Recipient]:
            rows = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients r WHERE state = 'dispatching' AND ("
                " (claimed_by = ? AND updated_at < ?) OR (claimed_by IS NOT ? AND NOT EXISTS ("
                "  SELECT 1 FROM leases l WHERE l.name = 'instance:' || r.claimed_by"
                "  AND l.expires_at >= ?)))"
                " ORDER BY updated_at, id LIMIT ?",
                (owner, own_older_than, owner, time.time(), limit),
            ).fetchall()
            taken = [recipient_from_row(row) for row in rows]
            conn.executemany(
                "UPDATE recipients SET claimed_by = ? WHERE id = ? AND state = 'dispatching'",
                [(owner, r.id) for r in taken],
            )
            return taken

        return await self._write(op)

    async def submitted_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        names = list(servers)

        def op(conn: sqlite3.Connection) -> list[Recipient]:
            found: list[Recipient] = []
            for start in range(0, len(names), CHUNK):
                part = names[start : start + CHUNK]
                found.extend(
                    recipient_from_row(row)
                    for row in conn.execute(
                        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'submitted' "
                        f"AND updated_at < ? AND server IN ({','.join('?' * len(part))}) "
                        "ORDER BY updated_at, id LIMIT ?",
                        (older_than, *part, limit),
                    )
                )
            found.sort(key=lambda r: (r.updated_at, r.id))
            return found[:limit]

        return await self._read(op)

    async def submitted_not_of(
        self, servers: Collection[str], older_than: float, limit: int
    ) -> list[Recipient]:
        # One JSON parameter: a NOT IN cannot be split into chunks like an IN.
        names = json.dumps(sorted(servers))

        def op(conn: sqlite3.Connection) -> list[Recipient]:
            return [
                recipient_from_row(row)
                for row in conn.execute(
                    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'submitted'"
                    " AND updated_at < ? AND route = 'goip' AND server IS NOT NULL"
                    " AND server NOT IN (SELECT value FROM json_each(?))"
                    " ORDER BY updated_at, id LIMIT ?",
                    (older_than, names, limit),
                )
            ]

        return await self._read(op)

    async def task_id_bounds(
        self, server: str, before: float, after: float
    ) -> tuple[int | None, int | None]:
        def op(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
            low = conn.execute(
                "SELECT MAX(t) FROM (SELECT CAST(task_id AS INTEGER) AS t FROM recipients"
                " WHERE server = ? AND task_id IS NOT NULL AND submitted_at < ?"
                " ORDER BY submitted_at DESC LIMIT ?)",
                (server, before, TASK_WINDOW_ROWS),
            ).fetchone()[0]
            high = conn.execute(
                "SELECT MIN(t) FROM (SELECT CAST(task_id AS INTEGER) AS t FROM recipients"
                " WHERE server = ? AND task_id IS NOT NULL AND submitted_at > ?"
                " ORDER BY submitted_at LIMIT ?)",
                (server, after, TASK_WINDOW_ROWS),
            ).fetchone()[0]
            return (
                int(low) if low is not None else None,
                int(high) if high is not None else None,
            )

        return await self._read(op)

    async def recorded_task_ids(self, server: str, first: int, stop: int) -> set[int]:
        def op(conn: sqlite3.Connection) -> set[int]:
            # Same expression and condition as the recipients_task_max index.
            return {
                int(row[0])
                for row in conn.execute(
                    "SELECT DISTINCT CAST(task_id AS INTEGER) FROM recipients WHERE server = ?"
                    " AND task_id IS NOT NULL AND CAST(task_id AS INTEGER) >= ?"
                    " AND CAST(task_id AS INTEGER) < ?",
                    (server, first, stop),
                )
            }

        return await self._read(op)

    async def reserve_line_sends(
        self,
        wanted: Mapping[tuple[str, str], int],
        per_minute: int,
        quotas: Mapping[tuple[str, str], tuple[int, float]] | None = None,
    ) -> LineReservation:
        quotas = quotas or {}

        def op(conn: sqlite3.Connection) -> LineReservation:
            minute, weight = minute_bucket(time.time())
            granted = {}
            for (server, line), want in wanted.items():
                quota = quotas.get((server, line))
                since = minute - 1 if quota is None else min(minute - 1, quota_since(quota[1]))
                counts = dict(
                    conn.execute(
                        "SELECT minute, sends FROM line_sends WHERE server = ? AND line = ?"
                        " AND minute >= ?",
                        (server, line, since),
                    ).fetchall()
                )
                n = grant(counts, minute, weight, want, per_minute)
                if quota is not None:
                    n = min(n, quota_grant(counts, minute, quota))
                granted[(server, line)] = n
                if n:
                    conn.execute(
                        "INSERT INTO line_sends (server, line, minute, sends) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (server, line, minute) DO UPDATE"
                        " SET sends = sends + excluded.sends",
                        (server, line, minute, n),
                    )
            conn.execute("DELETE FROM line_sends WHERE minute < ?", (minute - HORIZON_MINUTES - 1,))
            return LineReservation(minute, granted)

        return await self._write(op)

    async def release_line_sends(self, unused: Mapping[tuple[str, str], int], minute: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE line_sends SET sends = MAX(sends - ?, 0)"
                " WHERE server = ? AND line = ? AND minute = ?",
                [(n, server, line, minute) for (server, line), n in unused.items() if n > 0],
            )

        await self._write(op)
