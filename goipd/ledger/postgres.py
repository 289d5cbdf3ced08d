"""The ledger on PostgreSQL (asyncpg), for operators who run several goipd instances.

Same shape as the SQLite backend: writes are group-committed (one transaction per batch, a
SAVEPOINT per caller only once one caller's data was refused), accepts on a writer connection
of their own and every other write on another; reads use a small pool. Claims are
compare-and-set (`... WHERE state = 'queued'`), so two instances never both claim a recipient.
Everything lives in one schema (default `goipd`), created and migrated at start under an
advisory lock so instances starting together do not race.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog

from goipd.ledger.accepts import (
    Latest,
    accept_results,
    earlier_ids,
    guarded_numbers,
    note_latest,
    plan_accepts,
)
from goipd.ledger.documents_postgres import PostgresProviderDocuments
from goipd.ledger.events_postgres import PostgresStatusEvents
from goipd.ledger.group_commit import GroupCommitter
from goipd.ledger.ha_postgres import PostgresCoordination
from goipd.ledger.held_postgres import PostgresHeldStore
from goipd.ledger.pages_postgres import PostgresAlertPages
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
    message_from_row,
    queued_recipient,
    recipient_from_row,
    storable,
    storable_message,
    storable_or_none,
    task_key,
    text_hash,
)
from goipd.ledger.rules import SENT_AT_IF_NULL, Planned, planned_timed_updates
from goipd.ledger.servers_postgres import PostgresServerRecords, insert_inbound
from goipd.ledger.shared_postgres import PostgresSharedRouting
from goipd.ledger.upkeep_postgres import PostgresLineUpkeep
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

log = structlog.get_logger("goipd.ledger")
T = TypeVar("T")
Op = Callable[[asyncpg.Connection], Awaitable[Any]]
MIGRATION_LOCK = 0x60_1D_00_01
DEADLOCK_RETRIES = 3
WRITER_NAME = "goipd-writer"
"""application_name of the writer connections, so operators can tell them in pg_stat_activity."""
ACCEPT_LANE = 1
"""Which writer connection accepts are group-committed on (`PostgresLedger._acceptor`)."""
REPORT_LANES = (2, 3)
"""The writer connections send reports are group-committed on (`PostgresLedger._reporter`),
a batch on each at once, whichever is free taking what has queued. Push ingestion waits on
round trips (each answered only when goipd's busy event loop comes round: 1-2 ms under load,
see `_apply_to_tasks`), not on CPU: with one batch in flight goipd sat at 55% of its core and
PostgreSQL spent 80 us per report. A second batch in flight gave +15% reports/s (bench
scenario 2, 6 interleaved rounds); a third, nothing more. A free writer taking the next batch
beat each task's reports keeping to one writer by 10% (3 rounds); the order is not worth it:
the SMS Server sends each push from a process of its own, so they arrive in any order, and the
state rules take them in any order."""
CONNECT_TIMEOUT = 5.0
"""A reconnect holds up every queued write: better a quick error than a minute's wait."""
WRITE_TIMEOUT = 30.0
"""Longest one group-committed batch (or one read) may take. A network that drops packets
without a reset would otherwise hold every queued write, and /readyz's verdict, until TCP gives
up many minutes later; a batch that waits this long for row locks is no healthier."""
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 10.0
# After these the writer connection cannot be trusted with another batch: it is gone, the
# server is shutting it down, or it reached a standby that a failover left read-only.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.ReadOnlySQLTransactionError,
)
# Errors of one caller's statement (a constraint, text PostgreSQL cannot store): the savepoint
# undoes that caller's work alone and the rest of the batch commits.
ITEM_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL,
        segments INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        route TEXT,
        idempotency_key TEXT UNIQUE,
        send_at DOUBLE PRECISION,
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE recipients (
        id BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        number TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        route TEXT,
        server TEXT,
        line TEXT,
        task_id TEXT,
        upstream_id TEXT,
        error_code TEXT,
        error_meaning TEXT,
        excluded_lines TEXT NOT NULL DEFAULT '[]',
        text_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION,
        sent_at DOUBLE PRECISION,
        delivered_at DOUBLE PRECISION
    );
    CREATE INDEX recipients_due ON recipients (state, next_attempt_at);
    CREATE INDEX recipients_task ON recipients (server, task_id);
    CREATE INDEX recipients_duplicate ON recipients (number, text_hash, created_at);
    CREATE INDEX recipients_stale ON recipients (state, updated_at);
    CREATE INDEX recipients_message ON recipients (message_id);
    CREATE TABLE inbound (
        id BIGSERIAL PRIMARY KEY,
        source TEXT NOT NULL,
        line TEXT,
        from_number TEXT NOT NULL,
        to_number TEXT,
        content TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        upstream_time TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        inbound_id BIGINT NOT NULL REFERENCES inbound(id),
        url TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        done BOOLEAN NOT NULL DEFAULT FALSE,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (done, next_at);
    """,
    # 2: delivery reports of cloud providers are matched by their message id
    """
    CREATE INDEX recipients_upstream ON recipients (route, upstream_id);
    """,
    # 3: operators' manual line quarantines, which must survive restarts
    """
    CREATE TABLE line_quarantines (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        reason TEXT,
        since DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (server, line)
    );
    """,
    # 4: several instances on one ledger (goipd/fleet/ha.py): who claimed a recipient, leases, the
    # polling instance's view of each SMS Server, task ids by time (claim recovery) and sends
    # per line and minute (the line send rate shared by all instances)
    """
    ALTER TABLE recipients ADD COLUMN claimed_by TEXT;
    CREATE INDEX recipients_submitted ON recipients (server, submitted_at)
        WHERE task_id IS NOT NULL;
    CREATE INDEX recipients_task_number ON recipients (server, (task_id::bigint))
        WHERE task_id ~ '^[0-9]{1,18}$';
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE fleet_snapshots (
        server TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        version BIGINT NOT NULL,
        taken_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE line_sends (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        minute BIGINT NOT NULL,
        sends INTEGER NOT NULL,
        PRIMARY KEY (server, line, minute)
    );
    """,
    # 5: inbound SMS matched between pushes and inbox reads (goipd/inbound/inbox.py), how far
    # each SMS Server's inbox was read, and tasks goipd gave up on while the server holds them
    # (a report of one sent later is counted once, goipd/reports/stalls.py). Rows stored before
    # came from pushes.
    """
    ALTER TABLE inbound ADD COLUMN inbox_id BIGINT;
    ALTER TABLE inbound ADD COLUMN pushed BOOLEAN NOT NULL DEFAULT TRUE;
    CREATE UNIQUE INDEX inbound_inbox ON inbound (source, inbox_id) WHERE inbox_id IS NOT NULL;
    CREATE INDEX inbound_match ON inbound (source, from_number, upstream_time);
    CREATE TABLE inbox_reads (
        server TEXT PRIMARY KEY,
        covered_from TEXT NOT NULL,
        read_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE abandoned_tasks (
        server TEXT NOT NULL,
        task_id TEXT NOT NULL,
        number TEXT NOT NULL,
        recipient_id BIGINT NOT NULL,
        kind TEXT NOT NULL,
        abandoned_at DOUBLE PRECISION NOT NULL,
        counted BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (server, task_id, number)
    );
    """,
    # 6: state that decides what happens to messages, kept across restarts and shared by the
    # instances on one ledger: cloud delivery reports held until their send is recorded,
    # per-provider documents (c123's reply recovery plan), failed hand-overs' retry times,
    # quarantines after line errors, providers disabled after credential or credit refusals,
    # and the Alertmanager notifications already paged.
    """
    CREATE TABLE held_reports (
        provider TEXT NOT NULL,
        upstream_id TEXT NOT NULL,
        number TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT NOT NULL,
        meaning TEXT NOT NULL,
        held_at DOUBLE PRECISION NOT NULL,
        next_try DOUBLE PRECISION NOT NULL,
        wait DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (provider, upstream_id, number)
    );
    CREATE INDEX held_reports_due ON held_reports (next_try);
    CREATE INDEX held_reports_age ON held_reports (held_at);
    CREATE TABLE provider_state (
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (provider, name)
    );
    CREATE TABLE handover_retries (
        recipient_id BIGINT PRIMARY KEY,
        attempts INTEGER NOT NULL,
        retry_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX handover_retries_at ON handover_retries (retry_at);
    CREATE TABLE line_auto_quarantines (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        reason TEXT NOT NULL,
        code TEXT,
        since DOUBLE PRECISION NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (server, line)
    );
    CREATE TABLE provider_disables (
        provider TEXT PRIMARY KEY,
        code TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        probe_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE alert_pages (
        receiver TEXT NOT NULL,
        group_key TEXT NOT NULL,
        status TEXT NOT NULL,
        paged_at DOUBLE PRECISION NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (receiver, group_key, status)
    );
    CREATE INDEX alert_pages_age ON alert_pages (paged_at);
    """,
    # 7: what a sender asks of a message: priority and validity end (both copied to its
    # recipients, so due and expired recipients come straight from an index), and where and
    # which of its state changes are reported (see the SQLite migration 8).
    """
    ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN expires_at DOUBLE PRECISION;
    ALTER TABLE messages ADD COLUMN status_url TEXT;
    ALTER TABLE messages ADD COLUMN status_events TEXT;
    ALTER TABLE recipients ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE recipients ADD COLUMN expires_at DOUBLE PRECISION;
    DROP INDEX recipients_due;
    CREATE INDEX recipients_due ON recipients (state, priority, next_attempt_at);
    CREATE INDEX recipients_expiring ON recipients (expires_at)
        WHERE state = 'queued' AND expires_at IS NOT NULL;
    """,
    # 8: status callbacks (see the SQLite migration 9). The trigger function keeps the schema
    # it was created in (SET search_path FROM CURRENT: the migration runs with the ledger's
    # schema as search_path), whatever search_path the session that changes a state has.
    """
    CREATE TABLE status_events (
        id BIGSERIAL PRIMARY KEY,
        recipient_id BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        url TEXT NOT NULL,
        receiver TEXT NOT NULL,
        client TEXT NOT NULL,
        state TEXT NOT NULL,
        number TEXT NOT NULL,
        route TEXT,
        server TEXT,
        line TEXT,
        error_code TEXT,
        error_meaning TEXT,
        at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION,
        last_error TEXT
    );
    CREATE INDEX status_events_due ON status_events (next_at);
    CREATE INDEX status_events_receiver ON status_events (receiver, id);
    CREATE INDEX status_events_age ON status_events (at);
    CREATE FUNCTION recipients_status_event() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO status_events (recipient_id, message_id, url, receiver, client, state,
            number, route, server, line, error_code, error_meaning, at, next_at)
        SELECT NEW.id, m.id, m.status_url,
            lower(substring(m.status_url FROM '^[^:]*://[^/?#]*')),
            m.client, NEW.state, NEW.number, NEW.route, NEW.server, NEW.line,
            NEW.error_code, NEW.error_meaning, NEW.updated_at, NEW.updated_at
        FROM messages m
        WHERE m.id = NEW.message_id AND m.status_url IS NOT NULL
            AND position(',' || NEW.state || ',' IN ','
                || coalesce(m.status_events, 'sent,delivered,failed,cancelled,expired') || ',') > 0;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER recipients_status_event AFTER UPDATE OF state ON recipients
    FOR EACH ROW
    WHEN (NEW.state IS DISTINCT FROM OLD.state
        AND NEW.state IN ('submitted', 'sent', 'delivered', 'failed', 'cancelled', 'expired'))
    EXECUTE FUNCTION recipients_status_event();
    """,
    # 9: each line's last prepaid balance, and every automatic reboot, one row per line and
    # incident (see the SQLite migration 10).
    """
    CREATE TABLE line_balances (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        balance DOUBLE PRECISION,
        answer TEXT,
        read_at DOUBLE PRECISION,
        error_reason TEXT,
        error TEXT,
        error_at DOUBLE PRECISION,
        PRIMARY KEY (server, line)
    );
    CREATE TABLE line_remediations (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        incident_since DOUBLE PRECISION NOT NULL,
        incident TEXT NOT NULL,
        action TEXT NOT NULL,
        owner TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        result TEXT NOT NULL,
        finished_at DOUBLE PRECISION,
        detail TEXT,
        PRIMARY KEY (server, line, incident_since)
    );
    CREATE INDEX line_remediations_started ON line_remediations (server, started_at);
    """,
    # 10: due recipients come in (next_attempt_at, id) order straight from the index, so a
    # dispatch pass reads its batch and stops: with the id left out, every queued recipient
    # due at one instant (a campaign's send_at) was read and sorted by each pass.
    """
    CREATE INDEX recipients_due_ordered ON recipients (state, priority, next_attempt_at, id);
    DROP INDEX recipients_due;
    ALTER INDEX recipients_due_ordered RENAME TO recipients_due;
    """,
    # 11: the status events of migration 8 made once per statement instead of once per row:
    # the row trigger's function call and message lookup were most of what an UPDATE of a
    # few hundred recipients cost the server, for each of them, though nearly no message asks
    # for callbacks. The same events, in recipient id order within a statement; the message
    # is still looked up by its key per changed recipient (LATERAL), never by a scan.
    """
    DROP TRIGGER recipients_status_event ON recipients;
    DROP FUNCTION recipients_status_event();
    CREATE FUNCTION recipients_status_events() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO status_events (recipient_id, message_id, url, receiver, client, state,
            number, route, server, line, error_code, error_meaning, at, next_at)
        SELECT n.id, m.id, m.status_url,
            lower(substring(m.status_url FROM '^[^:]*://[^/?#]*')),
            m.client, n.state, n.number, n.route, n.server, n.line,
            n.error_code, n.error_meaning, n.updated_at, n.updated_at
        FROM changed_new n JOIN changed_old o ON o.id = n.id
        CROSS JOIN LATERAL (SELECT m.id, m.status_url, m.client FROM messages m
            WHERE m.id = n.message_id AND m.status_url IS NOT NULL
            AND position(',' || n.state || ',' IN ','
                || coalesce(m.status_events, 'sent,delivered,failed,cancelled,expired') || ',')
                > 0) AS m
        WHERE n.state IS DISTINCT FROM o.state
            AND n.state IN ('submitted', 'sent', 'delivered', 'failed', 'cancelled', 'expired')
        ORDER BY n.id;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER recipients_status_events AFTER UPDATE ON recipients
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_status_events();
    """,
    # 12: the due index holds queued recipients only, and hand-overs waiting for their send_at
    # have an index of their own: every change of state wrote a new entry into the due index
    # (no UPDATE of an indexed column is HOT), and no query reads it past the queue.
    """
    CREATE INDEX recipients_queued ON recipients (priority, next_attempt_at, id)
        WHERE state = 'queued';
    DROP INDEX recipients_due;
    ALTER INDEX recipients_queued RENAME TO recipients_due;
    CREATE INDEX recipients_handed_over ON recipients (next_attempt_at)
        WHERE state = 'submitted' AND route <> 'goip';
    """,
)


def _short(exc: BaseException) -> str:
    """The server's reason, never SQL parameters (they may hold numbers or text)."""
    if isinstance(exc, LedgerError):
        return str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        return f"{exc.__class__.__name__}: {exc.args[0] if exc.args else ''}"[:160]
    return exc.__class__.__name__


class PostgresLedger(
    PostgresCoordination,
    PostgresServerRecords,
    PostgresHeldStore,
    PostgresProviderDocuments,
    PostgresSharedRouting,
    PostgresAlertPages,
    PostgresStatusEvents,
    PostgresLineUpkeep,
):
    def __init__(
        self,
        url: str,
        schema: str = "goipd",
        instance_id: str = "local",
        *,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        if not SCHEMA_NAME.match(schema):
            raise LedgerError(f"schema name must match {SCHEMA_NAME.pattern}")
        self.url = url
        self.schema = schema
        self.instance_id = instance_id
        self.write_timeout = write_timeout
        self._pool: asyncpg.Pool | None = None
        self._writers: list[asyncpg.Connection | None] = [None] * (1 + max(REPORT_LANES))
        """Writer connections: every other write's, the accepts' (ACCEPT_LANE), the send
        reports' (REPORT_LANES)."""
        self._reconnect_delay = 0.0
        self._reconnect_at = 0.0
        """Monotonic time before which no reconnect is tried: a database that is down gets
        one attempt per delay, not one per queued write."""
        errors = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
        self._committer: GroupCommitter[Op] = GroupCommitter([self._run_batch], errors, _short)
        # Accepts have a writer of their own: a 202 then never waits for a dispatch pass's
        # or a report's transaction, and the commits' fsyncs overlap. Accepts only insert
        # rows nobody else has seen, so they never wait for another writer's locks.
        self._acceptor: GroupCommitter[Op] = GroupCommitter(
            [functools.partial(self._run_batch, lane=ACCEPT_LANE)], errors, _short
        )
        # Send reports write only recipients whose state is still as read (`_apply_to_tasks`),
        # as another instance's reports may, so batches of them may be written side by side;
        # every other write stays on one connection, in queue order.
        self._reporter: GroupCommitter[Op] = GroupCommitter(
            [functools.partial(self._run_batch, lane=lane) for lane in REPORT_LANES],
            errors,
            _short,
        )
        self._committers = (self._acceptor, self._reporter, self._committer)
        """Closed in this order: the callers of the first two may write on the last next."""

    async def open(self) -> None:
        try:
            setup = await asyncpg.connect(self.url)
            try:
                await setup.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
                await setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await setup.execute(f'SET search_path TO "{self.schema}"')
                version = await _migrate(setup)
                await setup.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
            finally:
                await setup.close()
            settings = {"search_path": self.schema}
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=8,
                server_settings=settings,
                command_timeout=self.write_timeout,
            )
            self._writers = [await self._connect_writer() for _ in self._writers]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(f"cannot open the PostgreSQL ledger: {_short(exc)}") from None
        log.info("ledger_opened", backend="postgresql", schema=self.schema, schema_version=version)
        for committer in self._committers:
            committer.start()

    async def _connect_writer(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url,
            timeout=CONNECT_TIMEOUT,
            server_settings={"search_path": self.schema, "application_name": WRITER_NAME},
        )

    async def close(self) -> None:
        for committer in self._committers:
            await committer.close()
        for lane, conn in enumerate(self._writers):
            if conn is not None and not conn.is_closed():
                await conn.close()
            self._writers[lane] = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def drop_schema(self) -> None:
        """For tests: remove everything this ledger created."""
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    # --- group commit ------------------------------------------------------------------------

    @property
    def commits(self) -> int:
        return sum(committer.commits for committer in self._committers)

    async def _write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        result: T = await self._committer.submit(op)
        return result

    @property
    def write_error(self) -> str | None:
        return next((c.last_error for c in self._committers if c.last_error is not None), None)

    async def check_writes(self) -> str | None:
        for committer in self._committers:
            if committer.last_error is not None:
                with contextlib.suppress(LedgerError):
                    # An xid makes the COMMIT a real one (a WAL record), which a read-only
                    # standby refuses: a live connection alone does not prove writes work.
                    await committer.submit(lambda conn: conn.fetchval("SELECT txid_current()"))
        return self.write_error

    async def _run_batch(self, ops: list[Op], lane: int = 0) -> list[Any]:
        conn = await self._connected_writer(lane)
        try:
            async with asyncio.timeout(self.write_timeout):
                return await self._run_batch_retrying(conn, ops)
        except TimeoutError:
            # Whether the COMMIT arrived is unknown, as for a lost connection: not run again.
            self._drop_writer(conn, None, f"no answer within {self.write_timeout:g}s")
            raise LedgerError(
                f"PostgreSQL did not finish a write within {self.write_timeout:g}s"
            ) from None
        except CONNECTION_ERRORS as exc:
            # Not run again on a new connection: if the COMMIT was sent, the server may have
            # applied it (an accept without idempotency key would be stored twice). Callers
            # hear the error; the next batch gets a new connection.
            self._drop_writer(conn, exc)
            raise
        except asyncpg.PostgresError as exc:
            if conn.is_closed():
                self._drop_writer(conn, exc)
            raise

    async def _connected_writer(self, lane: int) -> asyncpg.Connection:
        conn = self._writers[lane]
        if conn is not None and not conn.is_closed():
            return conn
        if conn is not None:
            # Closed while idle (backend terminated, server restarted): no batch was on it,
            # so this one goes to a new connection.
            self._drop_writer(conn, None)
        wait = self._reconnect_at - time.monotonic()
        if wait > 0:
            raise LedgerError(f"no connection to PostgreSQL; next attempt in {wait:.1f}s")
        try:
            conn = self._writers[lane] = await self._connect_writer()
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            self._reconnect_delay = min(
                max(self._reconnect_delay * 2, RECONNECT_FIRST_DELAY), RECONNECT_MAX_DELAY
            )
            self._reconnect_at = time.monotonic() + self._reconnect_delay
            log.warning(
                "ledger_reconnect_failed", reason=_short(exc), retry_in=self._reconnect_delay
            )
            raise LedgerError(f"cannot reconnect to PostgreSQL: {_short(exc)}") from None
        self._reconnect_delay = self._reconnect_at = 0.0
        log.info("ledger_reconnected", backend="postgresql", schema=self.schema)
        return conn

    def _drop_writer(
        self, conn: asyncpg.Connection, exc: BaseException | None, reason: str = ""
    ) -> None:
        for lane, writer in enumerate(self._writers):
            if writer is conn:
                self._writers[lane] = None
        conn.terminate()  # no goodbye to a server that may not answer
        if exc is not None:
            reason = _short(exc)
        log.warning("ledger_connection_lost", reason=reason or "closed while idle")

    async def _run_batch_retrying(self, conn: asyncpg.Connection, ops: list[Op]) -> list[Any]:
        return await _retrying_deadlocks(lambda: self._run_batch_once(conn, ops), len(ops))

    async def _run_batch_once(self, conn: asyncpg.Connection, ops: list[Op]) -> list[Any]:
        # Under load a round trip to the server costs a millisecond or more (goipd's event
        # loop and the server's backend each wait for a core), so a batch is written with as
        # few statements as its callers allow: no savepoint per caller unless one caller's
        # data is refused, and accepts alone need no BEGIN/COMMIT at all.
        accepts = [op for op in ops if type(op) is _Accept]
        if len(accepts) == len(ops):
            try:
                # A read and one INSERT, which commits by itself: a single statement is
                # atomic, and it returns once the commit is durable, like COMMIT would.
                return list(await _insert_accepts(conn, accepts))
            except ITEM_ERRORS:
                pass  # nothing was stored: again, each accept on its own
        elif len(reports := [op for op in ops if type(op) is _ApplyToTask]) == len(ops):
            try:
                # The reporter's batches: outside a transaction, where they can be.
                return list(await _apply_to_tasks(conn, reports))
            except ITEM_ERRORS:
                pass  # its one UPDATE refused: again, each report on its own
        else:
            try:
                async with conn.transaction():
                    return await _run_merged(conn, ops)
            except ITEM_ERRORS:
                pass  # the transaction is undone: again, each caller on its own
        return await _run_isolated(conn, ops)

    async def _read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise LedgerError("ledger is not open")
        try:
            async with self._pool.acquire() as conn:
                return await op(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(_short(exc)) from None

    # --- messages ----------------------------------------------------------------------------

    async def accept(self, message: NewMessage, now: float) -> AcceptResult:
        result: AcceptResult = await self._acceptor.submit(_Accept(storable_message(message), now))
        return result

    async def get_message(self, message_id: str) -> Message | None:
        async def op(conn: asyncpg.Connection) -> Message | None:
            found = await _load_messages(conn, [message_id])
            return found[0] if found else None

        return await self._read(op)

    async def message_bodies(
        self, message_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        async def op(conn: asyncpg.Connection) -> dict[str, tuple[str, str | None]]:
            # A key lookup per id (LATERAL): with a pass's hundreds of ids, `id = ANY(...)`
            # became a scan of every message while the table was young and never analysed.
            rows = await conn.fetch(
                "SELECT m.id, m.text, m.route FROM unnest($1::text[]) AS k(id)"
                " CROSS JOIN LATERAL (SELECT id, text, route FROM messages"
                " WHERE id = k.id) AS m",
                list(message_ids),
            )
            return {row[0]: (row[1], row[2]) for row in rows}

        return await self._read(op)

    async def list_messages(
        self, state: State | None, since: float | None, limit: int, after: str | None
    ) -> list[Message]:
        async def op(conn: asyncpg.Connection) -> list[Message]:
            clauses: list[str] = []
            params: list[Any] = []
            if after is not None:
                params.append(after)
                clauses.append(f"m.id < ${len(params)}")
            if since is not None:
                params.append(since)
                clauses.append(f"m.created_at >= ${len(params)}")
            if state is not None:
                states = [state.value]
                if state is State.SUBMITTED:
                    states.append(State.DISPATCHING.value)  # shown as submitted by the API
                params.append(states)
                clauses.append(
                    "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id "
                    f"AND r.state = ANY(${len(params)}::text[]))"
                )
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            params.append(limit)
            rows = await conn.fetch(
                f"SELECT m.id FROM messages m {where} ORDER BY m.id DESC LIMIT ${len(params)}",
                *params,
            )
            return await _load_messages(conn, [row[0] for row in rows])

        return await self._read(op)

    async def recent_duplicate(self, number: str, text: str, since: float) -> str | None:
        number, text = storable(number), storable(text)
        digest = text_hash(text)

        async def op(conn: asyncpg.Connection) -> str | None:
            value = await conn.fetchval(
                "SELECT message_id FROM recipients WHERE number = $1 AND text_hash = $2 "
                "AND created_at >= $3 AND state NOT IN ('cancelled', 'failed') LIMIT 1",
                number,
                digest,
                since,
            )
            return str(value) if value is not None else None

        return await self._read(op)

    async def cancel(
        self, message_id: str, now: float, handed_over: Sequence[int] = ()
    ) -> Message | None:
        async def op(conn: asyncpg.Connection) -> Message | None:
            await conn.execute(
                "UPDATE recipients SET state = 'cancelled', updated_at = $1 "
                "WHERE message_id = $2 AND (state = 'queued' OR "
                "(state = 'submitted' AND id = ANY($3::bigint[])))",
                now,
                message_id,
                list(handed_over),
            )
            found = await _load_messages(conn, [message_id])
            return found[0] if found else None

        return await self._write(op)

    # --- dispatch ----------------------------------------------------------------------------

    async def due(self, now: float, limit: int) -> list[Recipient]:
        # One index range per priority (recipients_due), highest first: no sort of everything
        # queued, however long the queue behind.
        ranges = " UNION ALL ".join(
            f"(SELECT {RECIPIENT_COLUMNS}, {priority} AS p FROM recipients WHERE state = 'queued'"
            f" AND priority = {priority} AND next_attempt_at <= $1"
            " ORDER BY next_attempt_at, id LIMIT $2)"
            for priority in reversed(PRIORITIES)
        )

        async def op(conn: asyncpg.Connection) -> list[Recipient]:
            rows = await conn.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM ({ranges}) AS due"
                " ORDER BY p DESC, next_attempt_at, id LIMIT $2",
                now,
                limit,
            )
            return [recipient_from_row(row) for row in rows]

        return await self._read(op)

    async def expire(self, now: float, limit: int) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            done: str = await conn.execute(
                # A CTE, evaluated once: a LIMIT in an IN (...) subquery may be re-run per row.
                "WITH doomed AS MATERIALIZED (SELECT id FROM recipients WHERE state = 'queued'"
                " AND expires_at <= $1 ORDER BY expires_at LIMIT $4 FOR UPDATE SKIP LOCKED)"
                " UPDATE recipients AS r SET state = 'expired', error_code = $2,"
                " error_meaning = $3, updated_at = $1 FROM doomed WHERE r.id = doomed.id",
                now,
                EXPIRED_CODE,
                EXPIRED_MEANING,
                limit,
            )
            return int(done.rpartition(" ")[2])

        return await self._write(op)

    async def claim(self, claims: Sequence[Claim], now: float) -> list[int]:
        async def op(conn: asyncpg.Connection) -> list[int]:
            rows = await conn.fetch(
                "UPDATE recipients AS r SET state = 'dispatching', route = c.route, "
                "server = c.server, line = c.line, attempts = r.attempts + 1, task_id = NULL, "
                "upstream_id = NULL, updated_at = $5, claimed_by = $6 "
                "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) "
                "AS c(id, route, server, line) WHERE r.id = c.id AND r.state = 'queued' "
                # Past its validity, a recipient is never handed to an upstream.
                "AND (r.expires_at IS NULL OR r.expires_at > $5) RETURNING r.id",
                [c.recipient_id for c in claims],
                [c.route for c in claims],
                [c.server for c in claims],
                [c.line for c in claims],
                now,
                self.instance_id,
            )
            claimed = {int(row[0]) for row in rows}
            return [c.recipient_id for c in claims if c.recipient_id in claimed]

        return await self._write(op)

    async def restamp_claims(self, recipient_ids: Sequence[int], now: float) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE recipients SET updated_at = $2 WHERE id = ANY($1::bigint[]) "
                "AND state = 'dispatching' AND claimed_by = $3",
                list(recipient_ids),
                now,
                self.instance_id,
            )

        await self._write(op)

    async def record(self, outcomes: Sequence[Outcome], now: float) -> None:
        await self._committer.submit(_Record(outcomes, now))

    async def find_by_task(self, server: str, task_id: str, number: str) -> Recipient | None:
        server, task_id, number, plus = task_key(server, task_id, number)

        async def op(conn: asyncpg.Connection) -> Recipient | None:
            row = await conn.fetchrow(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE server = $1 "
                "AND task_id = $2 AND number IN ($3, $4) LIMIT 1",
                server,
                task_id,
                number,
                plus,
            )
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
        found: tuple[Recipient, T] | None = await self._reporter.submit(
            _ApplyToTask(task_key(server, task_id, number), now, decide)
        )
        return found

    async def find_by_upstream(self, route: str, upstream_id: str) -> list[Recipient]:
        route, upstream_id = storable(route), storable(upstream_id)

        return await self._recipients(
            "route = $1 AND upstream_id = $2 ORDER BY id",
            route,
            upstream_id,
        )

    async def in_state(self, state: State, older_than: float, limit: int) -> list[Recipient]:
        return await self._recipients(
            "state = $1 AND updated_at < $2 ORDER BY updated_at LIMIT $3",
            state.value,
            older_than,
            limit,
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

        return await self._recipients(
            "state = 'sent' "
            "AND route = $1 AND sent_at > $2 AND sent_at < $3 AND (sent_at, id) > ($4, $5) "
            "ORDER BY sent_at, id LIMIT $6",
            route,
            sent_after,
            sent_before,
            after_sent,
            after_id,
            limit,
        )

    async def max_task_id(self, server: str) -> int | None:
        async def op(conn: asyncpg.Connection) -> int | None:
            value = await conn.fetchval(
                "SELECT MAX(task_id::bigint) FROM recipients WHERE server = $1 "
                "AND task_id ~ '^[0-9]{1,18}$'",
                server,
            )
            return int(value) if value is not None else None

        return await self._read(op)

    async def counts(self) -> dict[State, int]:
        async def op(conn: asyncpg.Connection) -> dict[State, int]:
            counts = dict.fromkeys(State, 0)
            for row in await conn.fetch("SELECT state, COUNT(*) FROM recipients GROUP BY state"):
                counts[State(row[0])] = int(row[1])
            return counts

        return await self._read(op)

    async def oldest_pending(self, now: float) -> float | None:
        async def op(conn: asyncpg.Connection) -> float | None:
            # Scheduled recipients wait with next_attempt_at at (a failed hand-over: up to)
            # their send_at; only for those is the message read, to tell them from retries.
            value = await conn.fetchval(
                "SELECT MIN(created_at) FROM recipients r WHERE state = ANY($1::text[]) "
                "AND NOT (state = 'queued' AND attempts = 0 AND next_attempt_at > $2) "
                "AND NOT (next_attempt_at > $2 AND EXISTS (SELECT 1 FROM messages m "
                "WHERE m.id = r.message_id AND m.send_at > $2))",
                list(PENDING),
                now,
            )
            return float(value) if value is not None else None

        return await self._read(op)

    async def settle_handed_over(self, now: float) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            # next_attempt_at of a hand-over is its send_at (set at accept, kept by a failed
            # hand-over): the index narrows the rows before the message is read.
            status = await conn.execute(
                "UPDATE recipients r SET state = 'sent', updated_at = $1, sent_at = m.send_at "
                "FROM messages m WHERE m.id = r.message_id AND r.state = 'submitted' "
                "AND r.next_attempt_at <= $1 AND r.route IS NOT NULL AND r.route <> 'goip' "
                "AND m.send_at <= $1",
                now,
            )
            return int(status.split()[-1])

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
        async def op(conn: asyncpg.Connection) -> list[InboundRecord]:
            rows = await conn.fetch(
                "SELECT id, source, line, from_number, to_number, content, received_at, "
                "upstream_time FROM inbound WHERE id < $1 ORDER BY id DESC LIMIT $2",
                before_id if before_id is not None else 2**62,
                limit,
            )
            return [InboundRecord(*row) for row in rows]

        return await self._read(op)

    async def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        async def op(conn: asyncpg.Connection) -> list[OutboxItem]:
            rows = await conn.fetch(
                "SELECT o.id, o.url, o.attempts, i.id, i.source, i.line, i.from_number, "
                "i.to_number, i.content, i.received_at, i.upstream_time FROM outbox o "
                "JOIN inbound i ON i.id = o.inbound_id WHERE NOT o.done AND o.next_at <= $1 "
                "ORDER BY o.next_at LIMIT $2",
                now,
                limit,
            )
            return [OutboxItem(row[0], InboundRecord(*row[3:]), row[1], row[2]) for row in rows]

        return await self._read(op)

    async def outbox_result(
        self, item_id: int, *, done: bool, retry_at: float | None, error: str | None, now: float
    ) -> None:
        error = storable_or_none(error)

        async def op(conn: asyncpg.Connection) -> None:
            if done or retry_at is None:
                await conn.execute(
                    "UPDATE outbox SET done = TRUE, attempts = attempts + $1, last_error = $2 "
                    "WHERE id = $3",
                    0 if done else 1,
                    error,
                    item_id,
                )
            else:
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = $1, last_error = $2 "
                    "WHERE id = $3",
                    retry_at,
                    error,
                    item_id,
                )

        await self._write(op)

    # --- manual line quarantines -------------------------------------------------------------

    async def quarantine_line(
        self, server: str, line: str, reason: str | None, now: float
    ) -> LineQuarantine:
        server, line, reason = storable(server), storable(line), storable_or_none(reason)

        async def op(conn: asyncpg.Connection) -> LineQuarantine:
            row = await conn.fetchrow(
                "INSERT INTO line_quarantines (server, line, reason, since) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (server, line) "
                "DO UPDATE SET reason = EXCLUDED.reason RETURNING server, line, reason, since",
                server,
                line,
                reason,
                now,
            )
            return LineQuarantine(*row)

        return await self._write(op)

    async def release_line(self, server: str, line: str) -> bool:
        server, line = storable(server), storable(line)

        async def op(conn: asyncpg.Connection) -> bool:
            deleted = await conn.fetchval(
                "DELETE FROM line_quarantines WHERE server = $1 AND line = $2 RETURNING 1",
                server,
                line,
            )
            return deleted is not None

        return await self._write(op)

    async def line_quarantines(self) -> list[LineQuarantine]:
        async def op(conn: asyncpg.Connection) -> list[LineQuarantine]:
            rows = await conn.fetch(
                "SELECT server, line, reason, since FROM line_quarantines ORDER BY server, line"
            )
            return [LineQuarantine(*row) for row in rows]

        return await self._read(op)


# --- operations run inside the writer's transaction ---------------------------------------------


async def _migrate(conn: asyncpg.Connection) -> int:
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
    if current > len(MIGRATIONS):
        raise LedgerError(
            f"ledger schema version {current} is newer than this goipd supports "
            f"({len(MIGRATIONS)}); upgrade goipd"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        async with conn.transaction():
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class _Accept:
    """An accept waiting for the writer: accepts queued together are stored with a few
    statements for all of them (`_run_merged`); called alone it is a batch of one."""

    message: NewMessage
    now: float

    async def __call__(self, conn: asyncpg.Connection) -> AcceptResult:
        return (await _insert_accepts(conn, [self]))[0]


async def _run_merged(conn: asyncpg.Connection, ops: Sequence[Op]) -> list[Any]:
    """Every op of a batch, inside its transaction and with no savepoint: queued accepts,
    reports or outcomes that follow one another are written together (a few statements for
    all of them, where each round trip holds the writer as long as a whole accept's Python),
    anything else on its own. An error of any caller undoes the whole transaction."""
    results: list[Any] = []
    start = 0
    while start < len(ops):
        kind = type(ops[start])
        end = start + 1
        if kind in _MERGED:
            while end < len(ops) and type(ops[end]) is kind:
                end += 1
            results.extend(await _MERGED[kind](conn, ops[start:end]))
        else:
            results.append(await ops[start](conn))
        start = end
    return results


async def _run_isolated(conn: asyncpg.Connection, ops: Sequence[Op]) -> list[Any]:
    """Every op of a batch in a savepoint of its own, in one transaction: one whose data
    PostgreSQL refuses fails alone and the others commit."""
    results: list[Any] = []
    async with conn.transaction():
        for op in ops:
            try:
                async with conn.transaction():  # a SAVEPOINT inside the batch
                    results.append(await op(conn))
            except ITEM_ERRORS as exc:
                log.warning("ledger_write_rejected", reason=_short(exc))
                results.append(LedgerError(_short(exc)))
    return results


class _ApplyToTask(ReportToApply):
    """A report waiting for the writer (`Ledger.apply_to_task`): reports queued together are
    looked up, decided and written with a few statements for all of them; called alone it is
    a batch of one."""

    __slots__ = ()

    async def __call__(self, conn: asyncpg.Connection) -> Applied:
        return applied_or_raise((await _apply_to_tasks(conn, [self]))[0])


_REPORTED_RECIPIENTS = (
    # The ids first, an index seek per report (recipients_task) whatever the statistics say
    # (see _ACCEPT_LOOKUPS), then those rows through the primary key.
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE id = ANY(ARRAY("
    "SELECT f.id FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
    " AS k(ks, kt, kn, kp) CROSS JOIN LATERAL (SELECT r.id FROM recipients r"
    " WHERE r.server = k.ks AND r.task_id = k.kt AND r.number IN (k.kn, k.kp)) AS f))"
    " ORDER BY id"
)
_CHANGED_MEANWHILE = object()
"""A report whose recipient another writer changed after it was read without a lock."""


async def _apply_to_tasks(
    conn: asyncpg.Connection, applies: Sequence[_ApplyToTask]
) -> list[Result]:
    """Reports, each on the newest recipient of its server, task id and number, decided in
    queue order (a later report of the same recipient sees what an earlier one did).

    Outside a transaction (the reporter's batches) the recipients are read without a lock and
    written with one compare-and-set UPDATE, which commits by itself: two round trips where
    BEGIN, a locking read, the UPDATE and COMMIT were four, each waiting 1-2 ms for goipd's
    busy event loop (bench scenario 2: a batch of ten reports took 5.4 ms, against 6.3 ms).
    Reports whose recipient another writer changed in between, and batches that need more
    than one UPDATE, are applied the locked way, in a transaction."""
    if conn.is_in_transaction():
        return await _apply_locked(conn, applies)
    results = await _apply_unlocked(conn, applies)
    again = [index for index, result in enumerate(results) if result is _CHANGED_MEANWHILE]
    if again:
        # What the UPDATE wrote is stored: from here on an error is the redone reports'
        # alone (a lost connection still fails them all, as a COMMIT whose answer is lost).
        redo = [applies[index] for index in again]
        redone: list[Any]
        try:
            redone = await _retrying_deadlocks(lambda: _apply_locked_alone(conn, redo), len(redo))
        except ITEM_ERRORS:
            redone = await _run_isolated(conn, redo)
        except asyncpg.DeadlockDetectedError as exc:
            redone = [LedgerError(_short(exc))] * len(redo)
        for index, result in zip(again, redone, strict=True):
            results[index] = result
    return results


async def _apply_locked_alone(
    conn: asyncpg.Connection, applies: Sequence[_ApplyToTask]
) -> list[Result]:
    async with conn.transaction():
        return await _apply_locked(conn, applies)


async def _retrying_deadlocks(run: Callable[[], Awaitable[T]], writes: int) -> T:
    """`run` (one transaction, or one statement) again when PostgreSQL broke a deadlock by
    rolling it back: another writer locked the same recipients in the other order, and
    nothing of `run` happened."""
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            return await run()
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_RETRIES:
                raise
            log.warning("ledger_deadlock_retried", writes=writes, attempt=attempt)
    raise AssertionError("unreachable")


async def _apply_unlocked(conn: asyncpg.Connection, applies: Sequence[_ApplyToTask]) -> list[Any]:
    """`_apply_to_tasks` with no lock: each result, or `_CHANGED_MEANWHILE` for a report to
    apply again the locked way."""
    rows = await conn.fetch(_REPORTED_RECIPIENTS, *_key_arrays(applies))
    # What a decision depends on, as read: a claim raises attempts, so a recipient sent
    # again under the same state is never mistaken for the one reported.
    versions = {row["id"]: (row["state"], row["attempts"], row["excluded_lines"]) for row in rows}
    decisions = decide_reports(rows, applies)
    if decisions.elsewhere or len(decisions.rounds) > 1:
        return [_CHANGED_MEANWHILE] * len(applies)
    written = (
        await _compare_and_set(conn, decisions.rounds[0], versions) if decisions.rounds else set()
    )
    missed = {row[-1] for planned in decisions.rounds for rows in planned.values() for row in rows}
    missed -= written
    return [
        _CHANGED_MEANWHILE if missed.intersection(read_from) else result
        for result, read_from in zip(decisions.results, decisions.read_from, strict=True)
    ]


async def _apply_locked(conn: asyncpg.Connection, applies: Sequence[_ApplyToTask]) -> list[Result]:
    """`_apply_to_tasks` in the caller's transaction. FOR UPDATE: another writer applying a
    report or an outcome to one of these recipients waits, so each is decided on the state it
    changes; in id order, as outcomes are recorded (`_record`), so those two never deadlock.
    A row changed between the lookup and the lock is still judged by its columns as locked
    (`report_batches.decide_reports`)."""
    rows = await conn.fetch(f"{_REPORTED_RECIPIENTS} FOR UPDATE", *_key_arrays(applies))
    decisions = decide_reports(rows, applies)
    await _write_planned(conn, decisions.rounds)
    for outcome, now in decisions.elsewhere:
        await _record(conn, [outcome.recipient_id], [(outcome, now)])
    return decisions.results


def _key_arrays(applies: Sequence[_ApplyToTask]) -> list[list[str]]:
    """Servers, task ids, numbers and +numbers, as arrays for `_REPORTED_RECIPIENTS`."""
    return [list(column) for column in zip(*(a.key for a in applies), strict=True)]


_ACCEPT_LOOKUPS = (
    # One round trip for both: messages already holding an idempotency key of the batch, and
    # what the flood guard needs (`accepts.Latest`) from the earliest window of the batch: the
    # latest live recipient per pair. LATERAL ... ORDER BY created_at DESC LIMIT 1 keeps it an
    # index seek per pair (recipients_duplicate is number, text_hash, created_at) whatever the
    # statistics say: a join let PostgreSQL pick a hash join over a scan of every recipient
    # while the table was young and never analysed, a scan that grew with each accept.
    "SELECT id, idempotency_key, NULL::text, NULL::float8 FROM messages"
    " WHERE idempotency_key = ANY($1::text[])"
    " UNION ALL"
    " SELECT l.message_id, w.number, w.text_hash, l.created_at"
    " FROM unnest($2::text[], $3::text[]) AS w(number, text_hash)"
    " CROSS JOIN LATERAL (SELECT r.message_id, r.created_at FROM recipients r"
    " WHERE r.number = w.number AND r.text_hash = w.text_hash AND r.created_at >= $4"
    " AND r.state NOT IN ('cancelled', 'failed') ORDER BY r.created_at DESC LIMIT 1) AS l"
)
_INSERT_ACCEPTED = (
    # Messages and their recipients in one statement (its foreign key checks run at its end,
    # when the messages are there), returning only the ids it assigned: the rest is known.
    f"WITH m AS (INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT * FROM unnest($1::text[],"
    " $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[],"
    " $9::text[], $10::int[], $11::float8[], $12::text[], $13::text[]))"
    " INSERT INTO recipients (message_id, number, state, attempts, next_attempt_at,"
    " excluded_lines, text_hash, created_at, updated_at, priority, expires_at)"
    " SELECT m, n, 'queued', 0, s, '[]', h, c, c, p, e FROM unnest($14::text[], $15::text[],"
    " $16::float8[], $17::text[], $18::float8[], $19::int[], $20::float8[])"
    " AS r(m, n, s, h, c, p, e) RETURNING id, message_id, number"
)


async def _insert_accepts(
    conn: asyncpg.Connection, accepts: Sequence[_Accept]
) -> list[AcceptResult]:
    messages = [a.message for a in accepts]
    digests = [text_hash(m.text) for m in messages]
    keys = list({m.idempotency_key for m in messages} - {None})
    wanted = guarded_numbers(messages, digests)
    stored: dict[str, str] = {}  # idempotency key → id of the message already in the ledger
    latest: Latest = {}
    if keys or wanted:
        pairs = [(number, digest) for digest, (_, numbers) in wanted.items() for number in numbers]
        since = min((since for since, _ in wanted.values()), default=0.0)
        for message_id, key_or_number, digest, created_at in await conn.fetch(
            _ACCEPT_LOOKUPS,
            keys,
            [number for number, _ in pairs],
            [digest for _, digest in pairs],
            since,
        ):
            if digest is None:
                stored[key_or_number] = message_id
            else:
                note_latest(latest, key_or_number, digest, created_at, message_id)
    plan = plan_accepts([(a.message, a.now) for a in accepts], digests, stored, latest)
    # Read before the INSERT: on the accept writer it commits by itself, so nothing that can
    # fail (a timeout, a lost connection) may come after it and tell a stored message's
    # client to send it again.
    found = {m.id: m for m in await _load_messages(conn, earlier_ids(plan))}
    made: dict[str, list[Recipient]] = {row[0]: [] for row in plan.message_rows}
    if plan.message_rows:
        rows = await conn.fetch(
            _INSERT_ACCEPTED,
            *(list(column) for column in zip(*plan.message_rows, strict=True)),
            *(list(column) for column in zip(*plan.recipient_rows, strict=True)),
        )
        # RETURNING promises no order: each id by its row's key (a message's numbers are
        # distinct), recipients then in id order as a read would list them.
        ids = {(row[1], row[2]): int(row[0]) for row in rows}
        for message_id, number, start, _, now, priority, expires_at in sorted(
            plan.recipient_rows, key=lambda row: ids[(row[0], row[1])]
        ):
            made[message_id].append(
                queued_recipient(
                    ids[(message_id, number)], message_id, number, start, now, priority, expires_at
                )
            )
    found.update((row[0], message_from_row(row, made[row[0]])) for row in plan.message_rows)
    return accept_results(plan, found)


async def _load_messages(conn: asyncpg.Connection, ids: Sequence[str]) -> list[Message]:
    if not ids:
        return []
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1::text[])", list(ids)
    )
    by_message: dict[str, list[Recipient]] = {row[0]: [] for row in rows}
    for row in await conn.fetch(
        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ANY($1::text[]) "
        "ORDER BY id",
        list(ids),
    ):
        by_message[row[1]].append(recipient_from_row(row))
    order = {message_id: index for index, message_id in enumerate(ids)}
    messages = [message_from_row(row, by_message[row[0]]) for row in rows]
    return sorted(messages, key=lambda m: order[m.id])


@dataclass(frozen=True, slots=True)
class _Record:
    """Outcomes waiting for the writer (`Ledger.record`): those queued together are locked
    and written with a few statements for all of them; called alone it is a batch of one."""

    outcomes: Sequence[Outcome]
    now: float

    async def __call__(self, conn: asyncpg.Connection) -> None:
        await _records(conn, [self])


async def _records(conn: asyncpg.Connection, records: Sequence[_Record]) -> list[None]:
    """One locking read and one UPDATE per set of changed columns (and round: see
    `rules.planned_updates`), however many outcomes of however many callers: a dispatch pass
    records hundreds at a time, its sends' replies come back a few at a time, and every round
    trip holds the writer. Applied in queue order, as one call each would."""
    outcomes = [(o, record.now) for record in records for o in record.outcomes]
    if outcomes:
        await _record(conn, list({o.recipient_id for o, _ in outcomes}), outcomes)
    return [None] * len(records)


async def _record(
    conn: asyncpg.Connection, ids: list[int], outcomes: Sequence[tuple[Outcome, float]]
) -> None:
    # FOR UPDATE: another instance applying a report for one of these recipients waits here,
    # so each transition is decided on the state it will actually change; in id order, so two
    # instances' batches lock alike (no deadlock between them).
    rows = await conn.fetch(
        "SELECT id, state, excluded_lines FROM recipients WHERE id = ANY($1::bigint[]) "
        "ORDER BY id FOR UPDATE",
        ids,
    )
    current = {row[0]: (State(row[1]), json.loads(row[2])) for row in rows}
    await _write_planned(conn, planned_timed_updates(current, outcomes))


_MERGED: dict[type, Callable[[asyncpg.Connection, Any], Awaitable[Sequence[Any]]]] = {
    _Accept: _insert_accepts,
    _ApplyToTask: _apply_to_tasks,
    _Record: _records,
}
"""Ops that queued one after another are run together by these (one result each)."""


_PLANNED_TYPES = {
    "state": "text",
    "next_attempt_at": "float8",
    "excluded_lines": "text",
    "updated_at": "float8",
    "task_id": "text",
    "upstream_id": "text",
    "error_code": "text",
    "error_meaning": "text",
    "submitted_at": "float8",
    "sent_at": "float8",
    "delivered_at": "float8",
    SENT_AT_IF_NULL: "float8",
}
"""Columns `rules.transition` may set, by their PostgreSQL type (arrays of them are sent)."""


async def _compare_and_set(
    conn: asyncpg.Connection, planned: Planned, versions: Mapping[int, tuple[str, int, str]]
) -> set[int]:
    """One round of `rules.planned_updates` as one UPDATE, whatever its sets of columns (a
    column a row does not change is written back as it is), each row only if its recipient
    still has the state, attempts and excluded lines it was decided on. The ids written."""
    # Sorted by id: a plan that follows the arrays (or the index of `id = ANY`) then locks
    # in id order, as recorded outcomes and locked reports do. A deadlock with a writer that
    # locks otherwise (a cancel, an expiry) undoes this one statement whole; it runs again.
    changes = sorted(
        (row[-1], dict(zip(columns, row[:-1], strict=True)))
        for columns, rows in planned.items()
        for row in rows
    )
    names = sorted({column for columns in planned for column in columns})
    arrays: list[list[Any]] = []
    values: dict[str, tuple[str, str]] = {}  # column → its value and whether the row sets it
    for column in names:
        arrays.append([sets.get(column) for _, sets in changes])
        arrays.append([column in sets for _, sets in changes])
        index = len(arrays) - 1
        values[column] = (f"u.c{index}", f"u.c{index + 1}")
    assignments = [
        f"{column} = CASE WHEN {is_set} THEN {value} ELSE r.{column} END"
        for column, (value, is_set) in values.items()
        if column not in ("sent_at", SENT_AT_IF_NULL)
    ]
    if "sent_at" in values or SENT_AT_IF_NULL in values:
        # A row sets at most one of them (`rules._by_columns`).
        cases = ""
        if "sent_at" in values:
            value, is_set = values["sent_at"]
            cases += f" WHEN {is_set} THEN {value}"
        if SENT_AT_IF_NULL in values:
            value, is_set = values[SENT_AT_IF_NULL]
            cases += f" WHEN {is_set} THEN COALESCE(r.sent_at, {value})"
        assignments.append(f"sent_at = CASE{cases} ELSE r.sent_at END")
    types = [t for column in names for t in (f"{_PLANNED_TYPES[column]}[]", "boolean[]")]
    ids = [rid for rid, _ in changes]
    arrays += [ids, *(list(v) for v in zip(*(versions[rid] for rid in ids), strict=True))]
    types += ["bigint[]", "text[]", "int[]", "text[]"]
    columns = ", ".join(f"c{index}" for index in range(1, len(names) * 2 + 1))
    parameters = ", ".join(f"${index}::{t}" for index, t in enumerate(types, 1))
    ids_parameter = f"${len(names) * 2 + 1}::bigint[]"
    written = await conn.fetch(
        f"UPDATE recipients AS r SET {', '.join(assignments)} FROM unnest({parameters})"
        f" AS u({columns}, id, was_state, was_attempts, was_excluded)"
        f" WHERE r.id = ANY({ids_parameter}) AND r.id = u.id AND r.state = u.was_state"
        " AND r.attempts = u.was_attempts AND r.excluded_lines = u.was_excluded RETURNING r.id",
        *arrays,
    )
    return {row[0] for row in written}


async def _write_planned(conn: asyncpg.Connection, rounds: list[Planned]) -> None:
    """The UPDATEs of `rules.planned_updates`, round by round: one statement per set of
    columns."""
    for columns, values in (item for planned in rounds for item in planned.items()):
        if len(values) == 1:
            assignments = ", ".join(
                f"sent_at = COALESCE(sent_at, ${index})"
                if column == SENT_AT_IF_NULL
                else f"{column} = ${index}"
                for index, column in enumerate(columns, 1)
            )
            await conn.execute(
                f"UPDATE recipients SET {assignments} WHERE id = ${len(columns) + 1}", *values[0]
            )
            continue
        # One statement for every row, its values as arrays: a row each (executemany) costs
        # the server an executor start per row, half the time of these UPDATEs. The rows are
        # found through the primary key (id = ANY), whatever the statistics say.
        assignments = ", ".join(
            f"sent_at = COALESCE(r.sent_at, u.c{index})"
            if column == SENT_AT_IF_NULL
            else f"{column} = u.c{index}"
            for index, column in enumerate(columns, 1)
        )
        arrays = ", ".join(
            f"${index}::{_PLANNED_TYPES[column]}[]" for index, column in enumerate(columns, 1)
        )
        names = ", ".join(f"c{index}" for index in range(1, len(columns) + 1))
        ids = f"${len(columns) + 1}::bigint[]"
        await conn.execute(
            f"UPDATE recipients AS r SET {assignments} FROM unnest({arrays}, {ids})"
            f" AS u({names}, id) WHERE r.id = ANY({ids}) AND r.id = u.id",
            *(list(column) for column in zip(*values, strict=True)),
        )
