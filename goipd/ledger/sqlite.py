"""The embedded ledger: one SQLite file in WAL mode, every commit fsync'd.

All writes go through one writer thread and are group-committed: whatever callers queued while
the previous transaction was being written is executed as one transaction and made durable
with one fsync, then every caller is answered. Each caller's work runs inside its own
SAVEPOINT, so one failing item fails only its caller; accepts queued together are inserted
with one `executemany` per table and fall back to one savepoint each only if that fails.
Reads use a second connection in another thread: WAL lets them run while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from goipd.ledger.accepts import (
    Latest,
    accept_results,
    earlier_ids,
    guarded_numbers,
    note_latest,
    plan_accepts,
)
from goipd.ledger.documents_sqlite import SqliteProviderDocuments
from goipd.ledger.events_sqlite import SqliteStatusEvents
from goipd.ledger.group_commit import GroupCommitter
from goipd.ledger.ha_sqlite import SqliteCoordination
from goipd.ledger.held_sqlite import SqliteHeldStore
from goipd.ledger.migrations import migrate
from goipd.ledger.pages_sqlite import SqliteAlertPages
from goipd.ledger.report_batches import (
    Applied,
    ReportToApply,
    Result,
    applied_or_raise,
    decide_reports,
)
from goipd.ledger.rows import (
    MESSAGE_COLUMNS,
    PENDING,
    RECIPIENT_COLUMNS,
    STATE_OF,
    crockford26,
    message_from_row,
    new_message_id,
    queued_recipient,
    recipient_from_row,
    storable,
    storable_message,
    storable_or_none,
    task_key,
    text_hash,
)
from goipd.ledger.rules import SENT_AT_IF_NULL, Planned, planned_updates
from goipd.ledger.servers_sqlite import SqliteServerRecords, insert_inbound
from goipd.ledger.shared_sqlite import SqliteSharedRouting
from goipd.ledger.upkeep_sqlite import SqliteLineUpkeep
from goipd.model import (
    EXPIRED_CODE,
    EXPIRED_MEANING,
    PRIORITIES,
    AcceptResult,
    Claim,
    InboundRecord,
    LedgerError,
    LineQuarantine,
    Message,
    NewMessage,
    OutboxItem,
    Outcome,
    Recipient,
    State,
)

__all__ = ["SqliteLedger", "new_message_id"]

log = structlog.get_logger("goipd.ledger")
T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

# Errors that concern one caller's statement (a constraint, a bad binding): that caller fails,
# the rest of the batch commits. Any other sqlite3.Error (disk full, read-only, I/O, corrupt)
# means the transaction as a whole cannot be trusted, so the batch fails.
ITEM_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
)
BACKSTOP_CHECKPOINT_PAGES = 10_000
"""The writer checkpoints itself only past ~40 MB of WAL; normally the reader thread does it
(see `_maybe_checkpoint`), off the path of the next commit."""
CHECKPOINT_EVERY_COMMITS = 64
CHECKPOINT_EVERY_SECONDS = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_CACHE_KIB = 32 * 1024
MAX_ID_TIME = 2**48 / 1000
"""Message ids hold 48 bits of milliseconds."""
VARIABLES_PER_QUERY = 500
"""Bound on `IN (?, ...)` lists, well under SQLite's limit on host parameters."""

INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_RECIPIENT = (
    "INSERT INTO recipients (id, message_id, number, state, attempts, next_attempt_at,"
    " excluded_lines, text_hash, created_at, updated_at, priority, expires_at)"
    " VALUES (?, ?, ?, 'queued', 0, ?, '[]', ?, ?, ?, ?, ?)"
)


def _connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    # Autocommit mode: transactions are begun and ended explicitly, never implicitly.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Without WAL, readers block the writer and a commit is not one sequential append.
            raise sqlite3.OperationalError(f"journal mode {mode} instead of wal")
        # FULL: a commit is on disk (WAL fsync'd) before it returns, so a 202 survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        if reader:
            conn.execute("PRAGMA query_only=ON")
        else:
            # Accepts insert into indexes at random places (idempotency keys, numbers): keep
            # those pages in memory rather than read them back from the file.
            conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            # The statement journal of an UPDATE run for many rows (a batch of reports) was
            # a temporary file created, written and deleted per batch, 15-25 us of a report's
            # CPU; in memory it holds only pages this transaction had already changed.
            conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def _fsync_directory(path: Path) -> None:
    """Make the database's directory entry durable: SQLite syncs the directory for its WAL,
    not for the database file, which a power cut right after creating it could lose."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; nothing better to do there
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    """An error for operators: SQLite's own words, never SQL or data."""
    if isinstance(exc, sqlite3.Error):
        text = str(exc).split("\n")[0][:120]
        name = getattr(exc, "sqlite_errorname", None)
        return f"{name}: {text}" if name else text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return exc.__class__.__name__


def _id_floor(since: float) -> str:
    """The smallest message id made at or after `since`: ids start with their creation time
    in milliseconds, so this turns a time filter into a range of the primary key."""
    return crockford26(int(since * 1000) << 80)


class SqliteLedger(
    SqliteCoordination,
    SqliteServerRecords,
    SqliteHeldStore,
    SqliteProviderDocuments,
    SqliteSharedRouting,
    SqliteAlertPages,
    SqliteStatusEvents,
    SqliteLineUpkeep,
):
    def __init__(self, path: Path, instance_id: str = "local") -> None:
        self.path = Path(path)
        self.instance_id = instance_id
        self._writer_pool: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._committer: GroupCommitter[Op] = GroupCommitter(
            [self._run_batch_in_thread], (sqlite3.Error, OSError), _reason
        )
        self._checkpoint: Future[None] | None = None
        self._commits_at_checkpoint = 0
        self._checkpointed_at = 0.0

    # --- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        loop = asyncio.get_running_loop()
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-write")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-read")
        try:
            self._writer = await loop.run_in_executor(self._writer_pool, self._open_writer)
            self._reader = await loop.run_in_executor(
                self._reader_pool, lambda: _connect(self.path, reader=True)
            )
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise LedgerError(f"cannot open ledger {self.path}: {_reason(exc)}") from None
            raise
        self._checkpointed_at = time.monotonic()
        self._committer.start()

    def _open_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = _connect(self.path, reader=False)
        try:
            version = migrate(conn)
        except BaseException:
            conn.close()
            raise
        # The directory may have just been created too: its own entry must last as well.
        _fsync_directory(self.path.parent)
        _fsync_directory(self.path.parent.parent)
        log.info("ledger_opened", path=str(self.path), schema_version=version)
        return conn

    async def close(self) -> None:
        """Finish the writes already queued, then release both connections and threads."""
        await self._committer.close()
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._checkpoint is not None:
            await asyncio.wrap_future(self._checkpoint)
            self._checkpoint = None
        loop = asyncio.get_running_loop()
        for conn, pool in ((self._reader, self._reader_pool), (self._writer, self._writer_pool)):
            if conn is not None and pool is not None:
                await loop.run_in_executor(pool, conn.close)
        self._reader = self._writer = None
        for pool in (self._writer_pool, self._reader_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer_pool = self._reader_pool = None

    # --- group commit ------------------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Transactions committed; with group commit, fewer than write calls."""
        return self._committer.commits

    @property
    def write_error(self) -> str | None:
        return self._committer.last_error

    async def check_writes(self) -> str | None:
        if self._committer.last_error is not None:
            with contextlib.suppress(LedgerError):
                # A real (if unchanging) row write: an empty transaction commits even on a
                # full disk or a read-only file.
                await self._write(
                    lambda conn: conn.execute("UPDATE schema_version SET version = version")
                )
        return self._committer.last_error

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._committer.submit(op)
        return result

    async def _run_batch_in_thread(self, ops: list[Op]) -> list[Any]:
        pool = self._writer_pool
        if pool is None:
            raise sqlite3.OperationalError("ledger is closed")
        results = await asyncio.get_running_loop().run_in_executor(pool, self._run_batch, ops)
        self._maybe_checkpoint()
        return results

    def _run_batch(self, ops: list[Op]) -> list[Any]:
        conn = self._writer
        if conn is None:
            raise sqlite3.OperationalError("ledger is closed")
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # left over when a failed batch could not roll back
        conn.execute("BEGIN IMMEDIATE")
        try:
            results: list[Any] = []
            for kind, group in itertools.groupby(ops, key=type):
                together = _TOGETHER.get(kind)
                if together is None:
                    results.extend(_run_one(conn, op) for op in group)
                else:
                    results.extend(_run_together(conn, list(group), together))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    log.error("ledger_rollback_failed", reason=_reason(exc))
            raise
        return results

    def _maybe_checkpoint(self) -> None:
        """Copy the WAL into the database from the reader's thread, so the fsync of the
        database file does not hold up the next group commit."""
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        commits = self.commits + 1  # the committer counts this batch once it has the results
        if commits - self._commits_at_checkpoint < CHECKPOINT_EVERY_COMMITS and (
            time.monotonic() - self._checkpointed_at < CHECKPOINT_EVERY_SECONDS
        ):
            return
        pool, conn = self._reader_pool, self._reader
        if pool is None or conn is None:
            return
        self._commits_at_checkpoint = commits
        self._checkpointed_at = time.monotonic()
        self._checkpoint = pool.submit(_checkpoint, conn)

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn, pool = self._reader, self._reader_pool
        if conn is None or pool is None:
            raise LedgerError("ledger is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _snapshot, conn, op)
        except sqlite3.Error as exc:
            raise LedgerError(_reason(exc)) from None

    # --- messages ----------------------------------------------------------------------------

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        result: AcceptResult = await self._committer.submit(_Accept(storable_message(message), now))
        return result

    async def get_message(self, message_id: str) -> Message | None:
        def op(conn: sqlite3.Connection) -> Message | None:
            found = _load_messages(conn, [message_id])
            return found[0] if found else None

        return await self._read(op)

    async def message_bodies(
        self, message_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        ids = list(message_ids)

        def op(conn: sqlite3.Connection) -> dict[str, tuple[str, str | None]]:
            found: dict[str, tuple[str, str | None]] = {}
            for chunk in range(0, len(ids), VARIABLES_PER_QUERY):
                part = ids[chunk : chunk + VARIABLES_PER_QUERY]
                found.update(
                    (row[0], (row[1], row[2]))
                    for row in conn.execute(
                        "SELECT id, text, route FROM messages WHERE id IN "
                        f"({','.join('?' * len(part))})",
                        part,
                    )
                )
            return found

        return await self._read(op)

    async def list_messages(
        self, state: State | None, since: float | None, limit: int, after: str | None
    ) -> list[Message]:
        def op(conn: sqlite3.Connection) -> list[Message]:
            clauses: list[str] = []
            params: list[Any] = []
            if after is not None:
                clauses.append("m.id < ?")
                params.append(after)
            if since is not None:
                clauses.append("m.created_at >= ?")
                params.append(since)
                if 0 < since < MAX_ID_TIME:
                    clauses.append("m.id >= ?")
                    params.append(_id_floor(since))
            if state is not None:
                states = [state.value]
                if state is State.SUBMITTED:
                    states.append(State.DISPATCHING.value)  # shown as submitted by the API
                clauses.append(
                    f"EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state "
                    f"IN ({','.join('?' * len(states))}))"
                )
                params.extend(states)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT m.id FROM messages m {where} ORDER BY m.id DESC LIMIT ?",
                    (*params, limit),
                )
            ]
            return _load_messages(conn, ids)

        return await self._read(op)

    async def recent_duplicate(self, number: str, text: str, since: float) -> str | None:
        number, text = storable(number), storable(text)
        digest = text_hash(text)

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT message_id FROM recipients WHERE number = ? AND text_hash = ? "
                "AND created_at >= ? AND state NOT IN ('cancelled', 'failed') "
                "ORDER BY created_at DESC LIMIT 1",
                (number, digest, since),
            ).fetchone()
            return row[0] if row else None

        return await self._read(op)

    async def cancel(
        self, message_id: str, now: float, handed_over: Sequence[int] = ()
    ) -> Message | None:
        def op(conn: sqlite3.Connection) -> Message | None:
            conn.execute(
                "UPDATE recipients SET state = 'cancelled', updated_at = ? "
                "WHERE message_id = ? AND state = 'queued'",
                (now, message_id),
            )
            conn.executemany(
                "UPDATE recipients SET state = 'cancelled', updated_at = ? "
                "WHERE id = ? AND message_id = ? AND state = 'submitted'",
                [(now, recipient_id, message_id) for recipient_id in handed_over],
            )
            found = _load_messages(conn, [message_id])
            return found[0] if found else None

        return await self._write(op)

    # --- dispatch ----------------------------------------------------------------------------

    async def due(self, now: float, limit: int) -> list[Recipient]:
        def op(conn: sqlite3.Connection) -> list[Recipient]:
            found: list[Recipient] = []
            # One index range per priority (recipients_due), highest first: no sort of
            # everything queued, however long the queue behind.
            for priority in reversed(PRIORITIES):
                if len(found) >= limit:
                    break
                found.extend(
                    recipient_from_row(row)
                    for row in conn.execute(
                        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'queued' "
                        "AND priority = ? AND next_attempt_at <= ? "
                        "ORDER BY next_attempt_at, id LIMIT ?",
                        (priority, now, limit - len(found)),
                    )
                )
            return found

        return await self._read(op)

    async def expire(self, now: float, limit: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE recipients SET state = 'expired', error_code = ?, error_meaning = ?,"
                " updated_at = ? WHERE id IN (SELECT id FROM recipients WHERE state = 'queued'"
                " AND expires_at <= ? ORDER BY expires_at LIMIT ?)",
                (EXPIRED_CODE, EXPIRED_MEANING, now, now, limit),
            )
            return cursor.rowcount

        return await self._write(op)

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        def op(conn: sqlite3.Connection) -> list[int]:
            claimed = []
            for claim in claims:
                # A task id left from an earlier attempt must not match reports for this one.
                cursor = conn.execute(
                    "UPDATE recipients SET state = 'dispatching', route = ?, server = ?, line = ?,"
                    " attempts = attempts + 1, task_id = NULL, upstream_id = NULL,"
                    " claimed_by = ?, updated_at = ? WHERE id = ? AND state = 'queued'"
                    # Past its validity, a recipient is never handed to an upstream.
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (
                        claim.route,
                        claim.server,
                        claim.line,
                        self.instance_id,
                        now,
                        claim.recipient_id,
                        now,
                    ),
                )
                if cursor.rowcount:
                    claimed.append(claim.recipient_id)
            return claimed

        return await self._write(op)

    async def restamp_claims(self, recipient_ids: Sequence[int], now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE recipients SET updated_at = ? WHERE id = ? AND state = 'dispatching' "
                "AND claimed_by = ?",
                [(now, recipient_id, self.instance_id) for recipient_id in recipient_ids],
            )

        await self._write(op)

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        await self._write(lambda conn: _record(conn, outcomes, now))

    async def find_by_task(self, server: str, task_id: str, number: str) -> Recipient | None:
        server, task_id, number, plus = task_key(server, task_id, number)

        def op(conn: sqlite3.Connection) -> Recipient | None:
            row = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE server = ? "
                "AND task_id = ? AND number IN (?, ?) ORDER BY id DESC LIMIT 1",
                (server, task_id, number, plus),
            ).fetchone()
            return recipient_from_row(row) if row else None

        return await self._read(op)

    async def apply_to_task(
        self,
        server: str,
        task_id: str,
        number: str,
        now: float,
        decide: Callable[[Recipient], tuple[Outcome | None, T]],
    ) -> tuple[Recipient, T] | None:
        # In the writer's transaction: one thread hop per report instead of a read and a
        # write, and the state decided on is the state changed.
        result: Applied = await self._write(
            _ApplyToTask(task_key(server, task_id, number), now, decide)
        )
        return result

    async def find_by_upstream(self, route: str, upstream_id: str) -> list[Recipient]:
        route, upstream_id = storable(route), storable(upstream_id)
        return await self._read(
            lambda conn: [
                recipient_from_row(row)
                for row in conn.execute(
                    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE route = ? "
                    "AND upstream_id = ? ORDER BY id",
                    (route, upstream_id),
                )
            ]
        )

    async def in_state(self, state: State, older_than: float, limit: int) -> list[Recipient]:
        return await self._read(
            lambda conn: [
                recipient_from_row(row)
                for row in conn.execute(
                    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = ? "
                    "AND updated_at < ? ORDER BY updated_at, id LIMIT ?",
                    (state.value, older_than, limit),
                )
            ]
        )

    async def awaiting_report(
        self,
        route: str,
        sent_after: float,
        sent_before: float,
        limit: int,
        after: tuple[float, int] | None = None,
    ) -> list[Recipient]:
        after_sent, after_id = after if after is not None else (sent_after, 0)
        return await self._read(
            lambda conn: [
                recipient_from_row(row)
                for row in conn.execute(
                    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'sent' "
                    "AND route = ? AND sent_at > ? AND sent_at < ? AND (sent_at, id) > (?, ?) "
                    "ORDER BY sent_at, id LIMIT ?",
                    (route, sent_after, sent_before, after_sent, after_id, limit),
                )
            ]
        )

    async def max_task_id(self, server: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            # Same expression and condition as the recipients_task_max index.
            row = conn.execute(
                "SELECT MAX(CAST(task_id AS INTEGER)) FROM recipients "
                "WHERE server = ? AND task_id IS NOT NULL",
                (server,),
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else None

        return await self._read(op)

    async def counts(self) -> dict[State, int]:
        def op(conn: sqlite3.Connection) -> dict[State, int]:
            counts = dict.fromkeys(State, 0)
            for state, count in conn.execute(
                "SELECT state, COUNT(*) FROM recipients GROUP BY state"
            ):
                counts[State(state)] = count
            return counts

        return await self._read(op)

    async def oldest_pending(self, now: float) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            # A scheduled recipient waiting for its time is not backlog; one waiting for a
            # retry is.
            # Scheduled recipients wait with next_attempt_at at (a failed hand-over: up to)
            # their send_at; only for those is the message read, to tell them from retries.
            row = conn.execute(
                "SELECT MIN(created_at) FROM recipients r WHERE state IN (?, ?, ?) "
                "AND NOT (state = 'queued' AND attempts = 0 AND next_attempt_at > ?) "
                "AND NOT (next_attempt_at > ? AND EXISTS (SELECT 1 FROM messages m "
                "WHERE m.id = r.message_id AND m.send_at > ?))",
                (*PENDING, now, now, now),
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return await self._read(op)

    async def settle_handed_over(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # next_attempt_at of a hand-over is its send_at (set at accept, kept by a failed
            # hand-over): the index narrows the rows before the message is read. Named, as
            # the planner would rather read every submitted recipient (recipients_stale).
            cursor = conn.execute(
                "UPDATE recipients INDEXED BY recipients_handed_over SET state = 'sent', "
                "updated_at = ?, sent_at = "
                "(SELECT send_at FROM messages m WHERE m.id = recipients.message_id) "
                "WHERE state = 'submitted' AND next_attempt_at <= ? AND route IS NOT NULL "
                "AND route <> 'goip' AND EXISTS (SELECT 1 FROM messages m "
                "WHERE m.id = recipients.message_id AND m.send_at <= ?)",
                (now, now, now),
            )
            return cursor.rowcount

        return await self._write(op)

    # --- inbound -----------------------------------------------------------------------------

    async def add_inbound(
        self,
        source: str,
        line: str | None,
        from_number: str,
        to_number: str | None,
        content: str,
        upstream_time: str,
        now: float,
        forward_to: Sequence[str] = (),
    ) -> int:
        values = (
            storable(source),
            storable_or_none(line),
            storable(from_number),
            storable_or_none(to_number),
            storable(content),
            now,
            storable(upstream_time),
        )
        return await self._write(lambda conn: insert_inbound(conn, values, forward_to))

    async def list_inbound(self, limit: int, before_id: int | None) -> list[InboundRecord]:
        columns = "id, source, line, from_number, to_number, content, received_at, upstream_time"

        def op(conn: sqlite3.Connection) -> list[InboundRecord]:
            if before_id is None:
                rows = conn.execute(
                    f"SELECT {columns} FROM inbound ORDER BY id DESC LIMIT ?", (limit,)
                )
            else:
                rows = conn.execute(
                    f"SELECT {columns} FROM inbound WHERE id < ? ORDER BY id DESC LIMIT ?",
                    (before_id, limit),
                )
            return [InboundRecord(*row) for row in rows]

        return await self._read(op)

    async def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                "SELECT o.id, o.url, o.attempts, i.id, i.source, i.line, i.from_number, "
                "i.to_number, i.content, i.received_at, i.upstream_time FROM outbox o "
                "JOIN inbound i ON i.id = o.inbound_id WHERE o.done = 0 AND o.next_at <= ? "
                "ORDER BY o.next_at, o.id LIMIT ?",
                (now, limit),
            )
            return [OutboxItem(row[0], InboundRecord(*row[3:]), row[1], row[2]) for row in rows]

        return await self._read(op)

    async def outbox_result(
        self, item_id: int, *, done: bool, retry_at: float | None, error: str | None, now: float
    ) -> None:
        error = storable_or_none(error)

        def op(conn: sqlite3.Connection) -> None:
            # `done = 0` in each: a late second answer for a finished row changes nothing.
            if done:
                conn.execute(
                    "UPDATE outbox SET done = 1, last_error = ? WHERE id = ? AND done = 0",
                    (error, item_id),
                )
            elif retry_at is None:
                conn.execute(
                    "UPDATE outbox SET done = 1, attempts = attempts + 1, last_error = ? "
                    "WHERE id = ? AND done = 0",
                    (error, item_id),
                )
            else:
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
                    "WHERE id = ? AND done = 0",
                    (retry_at, error, item_id),
                )

        await self._write(op)

    # --- manual line quarantines -------------------------------------------------------------

    async def quarantine_line(
        self, server: str, line: str, reason: str | None, now: float
    ) -> LineQuarantine:
        server, line, reason = storable(server), storable(line), storable_or_none(reason)

        def op(conn: sqlite3.Connection) -> LineQuarantine:
            row = conn.execute(
                "INSERT INTO line_quarantines (server, line, reason, since) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (server, line) DO UPDATE SET reason = excluded.reason "
                "RETURNING server, line, reason, since",
                (server, line, reason, now),
            ).fetchone()
            return LineQuarantine(*row)

        return await self._write(op)

    async def release_line(self, server: str, line: str) -> bool:
        server, line = storable(server), storable(line)

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM line_quarantines WHERE server = ? AND line = ?", (server, line)
            )
            return cursor.rowcount > 0

        return await self._write(op)

    async def line_quarantines(self) -> list[LineQuarantine]:
        return await self._read(
            lambda conn: [
                LineQuarantine(*row)
                for row in conn.execute(
                    "SELECT server, line, reason, since FROM line_quarantines ORDER BY server, line"
                )
            ]
        )


# --- run in the reader's thread -----------------------------------------------------------------


def _snapshot(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], T]) -> T:
    """One read transaction, so a message and its recipients come from the same commit."""
    conn.execute("BEGIN")
    try:
        return op(conn)
    finally:
        conn.execute("COMMIT")


def _checkpoint(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        # The writer's own checkpoint is the backstop; a failure here costs only WAL size.
        log.warning("ledger_checkpoint_failed", reason=_reason(exc))


# --- run inside the writer's transaction --------------------------------------------------------


def _run_one(conn: sqlite3.Connection, op: Op) -> Any:
    """`op` inside its own savepoint. Its failure is its caller's alone (returned, not raised)
    unless it broke the transaction, which fails the whole batch."""
    conn.execute("SAVEPOINT item")
    try:
        result = op(conn)
    except ITEM_ERRORS as exc:
        _undo(conn, "item")
        log.warning("ledger_write_rejected", reason=_reason(exc))
        return LedgerError(_reason(exc))
    except sqlite3.Error:
        raise
    except Exception as exc:
        # A bug in one caller's operation: that caller gets the real exception.
        _undo(conn, "item")
        return exc
    conn.execute("RELEASE item")
    return result


def _undo(conn: sqlite3.Connection, savepoint: str) -> None:
    if not conn.in_transaction:
        # SQLite rolled back the whole transaction by itself: nothing of the batch survived.
        raise sqlite3.OperationalError("transaction rolled back by SQLite")
    conn.execute(f"ROLLBACK TO {savepoint}")
    conn.execute(f"RELEASE {savepoint}")


@dataclass(frozen=True, slots=True)
class _Accept:
    """An accept waiting for the writer; callable like any other write for the one-by-one
    fallback."""

    message: NewMessage
    now: float

    def __call__(self, conn: sqlite3.Connection) -> AcceptResult:
        return _insert_accepts(conn, [self])[0]


Together = Callable[[sqlite3.Connection, Any], list[Any]]
"""Writes a run of ops of one kind, one result each (`_TOGETHER`)."""


def _run_together(conn: sqlite3.Connection, ops: list[Any], together: Together) -> list[Any]:
    """Ops of one kind that queued one after another, written by `together` with a few
    statements for all of them and one savepoint, not one each."""
    conn.execute("SAVEPOINT together")
    try:
        results = together(conn, ops)
    except sqlite3.Error as exc:
        if not isinstance(exc, ITEM_ERRORS):
            raise
        _undo(conn, "together")
        # Find out whose it was: one savepoint each, so only that caller fails.
        return [_run_one(conn, op) for op in ops]
    except Exception:
        _undo(conn, "together")
        return [_run_one(conn, op) for op in ops]
    conn.execute("RELEASE together")
    return results


def _insert_accepts(conn: sqlite3.Connection, accepts: Sequence[_Accept]) -> list[AcceptResult]:
    keys = list({a.message.idempotency_key for a in accepts} - {None})
    stored: dict[str, str] = {}  # idempotency key → id of the message already in the ledger
    for chunk in range(0, len(keys), VARIABLES_PER_QUERY):
        part = keys[chunk : chunk + VARIABLES_PER_QUERY]
        stored.update(
            conn.execute(
                "SELECT idempotency_key, id FROM messages WHERE idempotency_key IN "
                f"({','.join('?' * len(part))})",
                part,
            ).fetchall()
        )
    digests = [text_hash(a.message.text) for a in accepts]
    latest = _recent_sends(conn, [a.message for a in accepts], digests)
    plan = plan_accepts([(a.message, a.now) for a in accepts], digests, stored, latest)
    # Ids are assigned here rather than by SQLite so that one executemany inserts them all;
    # the write lock held since BEGIN IMMEDIATE makes MAX(id) safe.
    first_id = int(conn.execute("SELECT IFNULL(MAX(id), 0) FROM recipients").fetchone()[0]) + 1
    made: dict[str, list[Recipient]] = {row[0]: [] for row in plan.message_rows}
    for rid, (message_id, number, start, _, now, priority, expires_at) in enumerate(
        plan.recipient_rows, first_id
    ):
        made[message_id].append(
            queued_recipient(rid, message_id, number, start, now, priority, expires_at)
        )
    conn.executemany(INSERT_MESSAGE, plan.message_rows)
    conn.executemany(
        INSERT_RECIPIENT,
        [
            (rid, message_id, number, start, digest, now, now, priority, expires_at)
            for rid, (message_id, number, start, digest, now, priority, expires_at) in enumerate(
                plan.recipient_rows, first_id
            )
        ],
    )
    messages = {row[0]: message_from_row(row, made[row[0]]) for row in plan.message_rows}
    messages.update((m.id, m) for m in _load_messages(conn, earlier_ids(plan)))
    return accept_results(plan, messages)


def _recent_sends(
    conn: sqlite3.Connection, messages: Sequence[NewMessage], digests: Sequence[str]
) -> Latest:
    """What the flood guard needs (`accepts.Latest`): an index seek per (number, text hash)
    (recipients_duplicate: number, text_hash, created_at), all of a batch in one query: a
    batch of single-recipient messages with distinct texts took a query each."""
    wanted = [
        (number, digest, since)
        for digest, (since, numbers) in guarded_numbers(messages, digests).items()
        for number in sorted(numbers)
    ]
    latest: Latest = {}
    step = VARIABLES_PER_QUERY // 3
    for chunk in range(0, len(wanted), step):
        part = wanted[chunk : chunk + step]
        # CROSS JOIN keeps the wanted pairs the outer loop: one seek each, never a scan.
        for number, digest, created_at, message_id in conn.execute(
            "WITH wanted(number, text_hash, since) AS "
            f"(VALUES {','.join(['(?,?,?)'] * len(part))}) "
            "SELECT r.number, r.text_hash, r.created_at, r.message_id FROM wanted w "
            "CROSS JOIN recipients r ON r.number = w.number AND r.text_hash = w.text_hash "
            "AND r.created_at >= w.since WHERE r.state NOT IN ('cancelled', 'failed')",
            [value for pair in part for value in pair],
        ):
            note_latest(latest, number, digest, created_at, message_id)
    return latest


def _load_messages(conn: sqlite3.Connection, ids: Sequence[str]) -> list[Message]:
    """The messages `ids` with their recipients, in the order of `ids` (unknown ids skipped)."""
    ids = list(dict.fromkeys(ids))
    rows: list[Any] = []
    by_message: dict[str, list[Recipient]] = {}
    for chunk in range(0, len(ids), VARIABLES_PER_QUERY):
        part = ids[chunk : chunk + VARIABLES_PER_QUERY]
        marks = ",".join("?" * len(part))
        found = conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})", part
        ).fetchall()
        rows.extend(found)
        by_message.update((row[0], []) for row in found)
        for row in conn.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN ({marks}) ORDER BY id",
            part,
        ):
            by_message[row[1]].append(recipient_from_row(row))
    order = {message_id: index for index, message_id in enumerate(ids)}
    rows.sort(key=lambda row: order[row[0]])
    return [message_from_row(row, by_message[row[0]]) for row in rows]


class _ApplyToTask(ReportToApply):
    """A report waiting for the writer (`Ledger.apply_to_task`); callable like any other write
    for the one-by-one fallback."""

    __slots__ = ()

    def __call__(self, conn: sqlite3.Connection) -> Applied:
        return applied_or_raise(_apply_to_tasks(conn, [self])[0])


def _apply_to_tasks(conn: sqlite3.Connection, reports: Sequence[_ApplyToTask]) -> list[Result]:
    """Reports queued together: one read of all their recipients and one UPDATE per set of
    changed columns, where each took a savepoint, a read and an UPDATE. Every statement
    releases the GIL and must win it back from the busy event loop (bench scenario 2)."""
    rows: list[Any] = []
    step = VARIABLES_PER_QUERY // 4
    for chunk in range(0, len(reports), step):
        part = reports[chunk : chunk + step]
        # CROSS JOIN keeps the reports the outer loop: one seek each in recipients_task. A
        # join, not `id IN (SELECT ...)`, whose ephemeral table cost a temporary file per
        # batch; a recipient two reports name comes twice, and is read once.
        rows.extend(
            conn.execute(
                "WITH reported(ks, kt, kn, kp) AS "
                f"(VALUES {','.join(['(?,?,?,?)'] * len(part))}) "
                f"SELECT {RECIPIENT_COLUMNS} FROM reported CROSS JOIN recipients "
                "ON server = ks AND task_id = kt AND number IN (kn, kp)",
                [value for report in part for value in report.key],
            )
        )
    decisions = decide_reports(rows, reports)
    _write_planned(conn, decisions.rounds)
    for outcome, now in decisions.elsewhere:
        _record(conn, [outcome], now)
    return decisions.results


_TOGETHER: dict[type, Together] = {
    _Accept: _insert_accepts,
    _ApplyToTask: _apply_to_tasks,
}
"""Ops that queued one after another are written together by these (one result each)."""


def _record(conn: sqlite3.Connection, outcomes: Sequence[Outcome], now: float) -> None:
    # Reads every recipient once and writes each changed one once (a second change of state
    # in a later round), with one executemany per set of changed columns: a dispatch pass
    # records hundreds of outcomes at a time.
    ids = list(dict.fromkeys(o.recipient_id for o in outcomes))
    current: dict[int, tuple[State, list[str]]] = {}
    for chunk in range(0, len(ids), VARIABLES_PER_QUERY):
        part = ids[chunk : chunk + VARIABLES_PER_QUERY]
        for rid, state, excluded in conn.execute(
            "SELECT id, state, excluded_lines FROM recipients WHERE id IN "
            f"({','.join('?' * len(part))})",
            part,
        ):
            current[rid] = (STATE_OF[state], [] if excluded == "[]" else json.loads(excluded))
    _write_planned(conn, planned_updates(current, outcomes, now))


def _write_planned(conn: sqlite3.Connection, rounds: Sequence[Planned]) -> None:
    for planned in rounds:
        for columns, rows in planned.items():
            assignments = ", ".join(
                "sent_at = COALESCE(sent_at, ?)" if c == SENT_AT_IF_NULL else f"{c} = ?"
                for c in columns
            )
            conn.executemany(f"UPDATE recipients SET {assignments} WHERE id = ?", rows)
