"""The embedded ledger: one SQLite file in WAL mode, every commit fsync'd.

All writes go through one writer thread and are group-committed: whatever callers queued while
the previous transaction was being written is executed as one transaction and made durable
with one fsync, then every caller is answered. Each caller's work runs inside its own
SAVEPOINT, so one failing item fails only its caller. Reads use a second connection in another
thread: WAL lets them run while the writer commits.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from goipd.ledger.base import (
    AcceptResult,
    Claim,
    InboundRecord,
    LedgerError,
    Message,
    NewMessage,
    OutboxItem,
    Outcome,
    Recipient,
    State,
)
from goipd.ledger.group_commit import GroupCommitter
from goipd.ledger.migrations import migrate
from goipd.ledger.rows import (
    MESSAGE_COLUMNS,
    PENDING,
    RECIPIENT_COLUMNS,
    message_from_row,
    new_message_id,
    recipient_from_row,
    text_hash,
)
from goipd.ledger.rules import transition

log = structlog.get_logger("goipd.ledger")
T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (WAL fsync'd) before it returns, so a 202 survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _short(exc: BaseException) -> str:
    """An error for operators: the SQLite reason, never SQL or data."""
    text = str(exc).split("\n")[0]
    return text[:120] if isinstance(exc, sqlite3.Error) else exc.__class__.__name__


class SqliteLedger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-write")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-read")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._committer: GroupCommitter[Op] = GroupCommitter(
            self._run_batch_in_thread, (sqlite3.Error, OSError), _short
        )

    # --- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer_pool, self._open_writer)
            self._reader = await loop.run_in_executor(self._reader_pool, _connect, self.path)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {_short(exc)}") from None
        self._committer.start()

    def _open_writer(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = _connect(self.path)
        version = migrate(conn)
        log.info("ledger_opened", path=str(self.path), schema_version=version)
        self._writer = conn

    async def close(self) -> None:
        await self._committer.close()
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await loop.run_in_executor(self._writer_pool, self._writer.close)
            self._writer = None
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
            self._reader = None
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    # --- group commit ------------------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Transactions committed; with group commit, fewer than write calls."""
        return self._committer.commits

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._committer.submit(op)
        return result

    async def _run_batch_in_thread(self, ops: list[Op]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_pool, self._run_batch, ops)

    def _run_batch(self, ops: list[Op]) -> list[Any]:
        conn = self._writer
        assert conn is not None
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT item")
                try:
                    results.append(op(conn))
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO item")
                    results.append(LedgerError(_short(exc)))
                finally:
                    conn.execute("RELEASE item")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        if conn is None:
            raise LedgerError("ledger is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_pool, op, conn)
        except sqlite3.Error as exc:
            raise LedgerError(_short(exc)) from None

    # --- messages ----------------------------------------------------------------------------

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        return await self._write(lambda conn: _accept(conn, message, now))

    async def get_message(self, message_id: str) -> Message | None:
        def op(conn: sqlite3.Connection) -> Message | None:
            found = _load_messages(conn, [message_id])
            return found[0] if found else None

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
        digest = text_hash(text)

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT message_id FROM recipients WHERE number = ? AND text_hash = ? "
                "AND created_at >= ? AND state NOT IN ('cancelled', 'failed') LIMIT 1",
                (number, digest, since),
            ).fetchone()
            return row[0] if row else None

        return await self._read(op)

    async def cancel(self, message_id: str, now: float) -> Message | None:
        def op(conn: sqlite3.Connection) -> Message | None:
            conn.execute(
                "UPDATE recipients SET state = 'cancelled', updated_at = ? "
                "WHERE message_id = ? AND state = 'queued'",
                (now, message_id),
            )
            found = _load_messages(conn, [message_id])
            return found[0] if found else None

        return await self._write(op)

    # --- dispatch ----------------------------------------------------------------------------

    async def due(self, now: float, limit: int) -> list[Recipient]:
        return await self._read(
            lambda conn: [
                recipient_from_row(row)
                for row in conn.execute(
                    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'queued' "
                    "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                    (now, limit),
                )
            ]
        )

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        def op(conn: sqlite3.Connection) -> list[int]:
            claimed = []
            for claim in claims:
                cursor = conn.execute(
                    "UPDATE recipients SET state = 'dispatching', route = ?, server = ?, line = ?,"
                    " attempts = attempts + 1, task_id = NULL, upstream_id = NULL,"
                    " updated_at = ? WHERE id = ? AND state = 'queued'",
                    (claim.route, claim.server, claim.line, now, claim.recipient_id),
                )
                if cursor.rowcount:
                    claimed.append(claim.recipient_id)
            return claimed

        return await self._write(op)

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        await self._write(lambda conn: _record(conn, outcomes, now))

    async def find_by_task(self, server: str, task_id: str, number: str) -> Recipient | None:
        plus = number if number.startswith("+") else f"+{number}"

        def op(conn: sqlite3.Connection) -> Recipient | None:
            row = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE server = ? "
                "AND task_id = ? AND number IN (?, ?) LIMIT 1",
                (server, task_id, number, plus),
            ).fetchone()
            return recipient_from_row(row) if row else None

        return await self._read(op)

    async def find_by_upstream(self, route: str, upstream_id: str) -> list[Recipient]:
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
                    "AND updated_at < ? ORDER BY updated_at LIMIT ?",
                    (state.value, older_than, limit),
                )
            ]
        )

    async def max_task_id(self, server: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
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
            row = conn.execute(
                "SELECT MIN(created_at) FROM recipients WHERE state IN (?, ?, ?) "
                "AND NOT (state = 'queued' AND attempts = 0 AND next_attempt_at > ?)",
                (*PENDING, now),
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return await self._read(op)

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
        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO inbound (source, line, from_number, to_number, content, received_at,"
                " upstream_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, line, from_number, to_number, content, now, upstream_time),
            )
            inbound_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO outbox (inbound_id, url, attempts, next_at, done) "
                "VALUES (?, ?, 0, ?, 0)",
                [(inbound_id, url, now) for url in forward_to],
            )
            return inbound_id

        return await self._write(op)

    async def list_inbound(self, limit: int, before_id: int | None) -> list[InboundRecord]:
        def op(conn: sqlite3.Connection) -> list[InboundRecord]:
            rows = conn.execute(
                "SELECT id, source, line, from_number, to_number, content, received_at, "
                "upstream_time FROM inbound WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id if before_id is not None else 2**62, limit),
            )
            return [InboundRecord(*row) for row in rows]

        return await self._read(op)

    async def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                "SELECT o.id, o.url, o.attempts, i.id, i.source, i.line, i.from_number, "
                "i.to_number, i.content, i.received_at, i.upstream_time FROM outbox o "
                "JOIN inbound i ON i.id = o.inbound_id WHERE o.done = 0 AND o.next_at <= ? "
                "ORDER BY o.next_at LIMIT ?",
                (now, limit),
            )
            return [OutboxItem(row[0], InboundRecord(*row[3:]), row[1], row[2]) for row in rows]

        return await self._read(op)

    async def outbox_result(
        self, item_id: int, *, done: bool, retry_at: float | None, error: str | None, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if done or retry_at is None:
                conn.execute(
                    "UPDATE outbox SET done = 1, attempts = attempts + ?, last_error = ? "
                    "WHERE id = ?",
                    (0 if done else 1, error, item_id),
                )
            else:
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
                    "WHERE id = ?",
                    (retry_at, error, item_id),
                )

        await self._write(op)


# --- operations run inside the writer's transaction ---------------------------------------------


def _accept(conn: sqlite3.Connection, message: NewMessage, now: float) -> AcceptResult:
    if message.idempotency_key is not None:
        row = conn.execute(
            "SELECT id FROM messages WHERE idempotency_key = ?", (message.idempotency_key,)
        ).fetchone()
        if row is not None:
            return AcceptResult(_load_messages(conn, [row[0]])[0], created=False)
    message_id = new_message_id(now)
    conn.execute(
        "INSERT INTO messages (id, created_at, text, segments, encoding, route, idempotency_key,"
        " send_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            now,
            message.text,
            message.segments,
            message.encoding,
            message.route,
            message.idempotency_key,
            message.send_at,
            message.client,
        ),
    )
    digest = text_hash(message.text)
    start = message.send_at if message.send_at is not None else now
    recipients = []
    for number in message.recipients:
        cursor = conn.execute(
            "INSERT INTO recipients (message_id, number, state, attempts, next_attempt_at,"
            " excluded_lines, text_hash, created_at, updated_at)"
            " VALUES (?, ?, 'queued', 0, ?, '[]', ?, ?, ?)",
            (message_id, number, start, digest, now, now),
        )
        recipients.append(
            Recipient(
                id=int(cursor.lastrowid or 0),
                message_id=message_id,
                number=number,
                state=State.QUEUED,
                attempts=0,
                next_attempt_at=start,
                route=None,
                server=None,
                line=None,
                task_id=None,
                upstream_id=None,
                error_code=None,
                error_meaning=None,
                excluded_lines=(),
                created_at=now,
                updated_at=now,
                submitted_at=None,
                sent_at=None,
                delivered_at=None,
            )
        )
    stored = Message(
        id=message_id,
        text=message.text,
        segments=message.segments,
        encoding=message.encoding,
        route=message.route,
        idempotency_key=message.idempotency_key,
        send_at=message.send_at,
        created_at=now,
        client=message.client,
        recipients=tuple(recipients),
    )
    return AcceptResult(stored, created=True)


def _load_messages(conn: sqlite3.Connection, ids: Sequence[str]) -> list[Message]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})",
        tuple(ids),
    ).fetchall()
    by_message: dict[str, list[Recipient]] = {row[0]: [] for row in rows}
    for row in conn.execute(
        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN ({marks}) ORDER BY id",
        tuple(ids),
    ):
        by_message[row[1]].append(recipient_from_row(row))
    order = {message_id: index for index, message_id in enumerate(ids)}
    messages = [message_from_row(row, by_message[row[0]]) for row in rows]
    return sorted(messages, key=lambda m: order[m.id])


def _record(conn: sqlite3.Connection, outcomes: Sequence[Outcome], now: float) -> None:
    for outcome in outcomes:
        row = conn.execute(
            "SELECT state, excluded_lines FROM recipients WHERE id = ?", (outcome.recipient_id,)
        ).fetchone()
        if row is None:
            continue
        sets = transition(State(row[0]), json.loads(row[1]), outcome, now)
        if sets is None:
            continue
        if "excluded_lines" in sets:
            sets["excluded_lines"] = json.dumps(sets["excluded_lines"])
        assignments = ", ".join(f"{name} = ?" for name in sets)
        conn.execute(
            f"UPDATE recipients SET {assignments} WHERE id = ?",
            (*sets.values(), outcome.recipient_id),
        )
        if outcome.state is State.DELIVERED:
            conn.execute(
                "UPDATE recipients SET sent_at = ? WHERE id = ? AND sent_at IS NULL",
                (now, outcome.recipient_id),
            )
