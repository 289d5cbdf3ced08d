"""Schema versions of the SQLite ledger, applied in order at start-up, each in one transaction.

A migration is appended, never edited once released: a database records every version applied
in `schema_version`, and a goipd older than its database refuses to open it rather than guess.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from goipd.model import LedgerError

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        text TEXT NOT NULL,
        segments INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        route TEXT,
        idempotency_key TEXT UNIQUE,
        send_at REAL,
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        number TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        route TEXT,
        server TEXT,
        line TEXT,
        task_id TEXT,
        upstream_id TEXT,
        error_code TEXT,
        error_meaning TEXT,
        excluded_lines TEXT NOT NULL DEFAULT '[]',
        text_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        submitted_at REAL,
        sent_at REAL,
        delivered_at REAL
    );
    CREATE INDEX recipients_due ON recipients (state, next_attempt_at);
    CREATE INDEX recipients_task ON recipients (server, task_id);
    CREATE INDEX recipients_duplicate ON recipients (number, text_hash, created_at);
    CREATE INDEX recipients_stale ON recipients (state, updated_at);
    CREATE INDEX recipients_message ON recipients (message_id);
    CREATE TABLE inbound (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        line TEXT,
        from_number TEXT NOT NULL,
        to_number TEXT,
        content TEXT NOT NULL,
        received_at REAL NOT NULL,
        upstream_time TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        inbound_id INTEGER NOT NULL REFERENCES inbound(id),
        url TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (done, next_at);
    """,
    # 2: delivery reports of cloud providers are matched by their message id
    """
    CREATE INDEX recipients_upstream ON recipients (route, upstream_id);
    """,
    # 3: task ids and provider ids arrive only once a recipient is submitted, so partial
    # indexes cost an accept nothing; report matching seeks on the number too, and the
    # expression index answers max_task_id without scanning every task the server ever had.
    """
    DROP INDEX recipients_task;
    CREATE INDEX recipients_task ON recipients (server, task_id, number)
        WHERE task_id IS NOT NULL;
    CREATE INDEX recipients_task_max ON recipients (server, CAST(task_id AS INTEGER))
        WHERE task_id IS NOT NULL;
    DROP INDEX recipients_upstream;
    CREATE INDEX recipients_upstream ON recipients (route, upstream_id)
        WHERE upstream_id IS NOT NULL;
    """,
    # 4: operators' manual line quarantines, which must survive restarts
    """
    CREATE TABLE line_quarantines (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        reason TEXT,
        since REAL NOT NULL,
        PRIMARY KEY (server, line)
    );
    """,
    # 5: several instances on one ledger (goipd/fleet/ha.py): who claimed a recipient, leases, the
    # polling instance's view of each SMS Server, task ids by time (claim recovery) and sends
    # per line and minute (the line send rate shared by all instances)
    """
    ALTER TABLE recipients ADD COLUMN claimed_by TEXT;
    CREATE INDEX recipients_submitted ON recipients (server, submitted_at)
        WHERE task_id IS NOT NULL;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE fleet_snapshots (
        server TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        version INTEGER NOT NULL,
        taken_at REAL NOT NULL,
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
    # 6: inbound SMS matched between pushes and inbox reads (goipd/inbound/inbox.py), how far
    # each SMS Server's inbox was read, and tasks goipd gave up on while the server holds them
    # (a report of one sent later is counted once, goipd/reports/stalls.py). Rows stored before
    # came from pushes.
    """
    ALTER TABLE inbound ADD COLUMN inbox_id INTEGER;
    ALTER TABLE inbound ADD COLUMN pushed INTEGER NOT NULL DEFAULT 1;
    CREATE UNIQUE INDEX inbound_inbox ON inbound (source, inbox_id) WHERE inbox_id IS NOT NULL;
    CREATE INDEX inbound_match ON inbound (source, from_number, upstream_time);
    CREATE TABLE inbox_reads (
        server TEXT PRIMARY KEY,
        covered_from TEXT NOT NULL,
        read_at REAL NOT NULL
    );
    CREATE TABLE abandoned_tasks (
        server TEXT NOT NULL,
        task_id TEXT NOT NULL,
        number TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        abandoned_at REAL NOT NULL,
        counted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (server, task_id, number)
    );
    """,
    # 7: state that decides what happens to messages, kept across restarts and shared by the
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
        held_at REAL NOT NULL,
        next_try REAL NOT NULL,
        wait REAL NOT NULL,
        PRIMARY KEY (provider, upstream_id, number)
    );
    CREATE INDEX held_reports_due ON held_reports (next_try);
    CREATE INDEX held_reports_age ON held_reports (held_at);
    CREATE TABLE provider_state (
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (provider, name)
    );
    CREATE TABLE handover_retries (
        recipient_id INTEGER PRIMARY KEY,
        attempts INTEGER NOT NULL,
        retry_at REAL NOT NULL
    );
    CREATE INDEX handover_retries_at ON handover_retries (retry_at);
    CREATE TABLE line_auto_quarantines (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        reason TEXT NOT NULL,
        code TEXT,
        since REAL NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (server, line)
    );
    CREATE TABLE provider_disables (
        provider TEXT PRIMARY KEY,
        code TEXT NOT NULL,
        since REAL NOT NULL,
        probe_at REAL NOT NULL
    );
    CREATE TABLE alert_pages (
        receiver TEXT NOT NULL,
        group_key TEXT NOT NULL,
        status TEXT NOT NULL,
        paged_at REAL NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (receiver, group_key, status)
    );
    CREATE INDEX alert_pages_age ON alert_pages (paged_at);
    """,
    # 8: what a sender asks of a message (goipd/callbacks/, http-api.md): its priority, copied to
    # its recipients so that due recipients are read highest priority first straight from an
    # index; its validity end, also copied (recipients past it expire without a join); where its
    # state changes are reported, and which.
    """
    ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN expires_at REAL;
    ALTER TABLE messages ADD COLUMN status_url TEXT;
    ALTER TABLE messages ADD COLUMN status_events TEXT;
    ALTER TABLE recipients ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE recipients ADD COLUMN expires_at REAL;
    DROP INDEX recipients_due;
    CREATE INDEX recipients_due ON recipients (state, priority, next_attempt_at);
    CREATE INDEX recipients_expiring ON recipients (expires_at)
        WHERE state = 'queued' AND expires_at IS NOT NULL;
    """,
    # 9: status callbacks (goipd/callbacks/). A trigger writes the event in the transaction that
    # changes the state, so no code path (record, cancel, expire, stall handling, a hand edit)
    # changes a state without its event. It looks the message up by primary key only for the
    # public states, and stops there when the message has no status_url. AUTOINCREMENT: event
    # ids are what receivers de-duplicate by, and a delivered (deleted) row's id must never
    # come back. `receiver` is scheme://host[:port] as written, lower-cased, the unit of
    # back-off, caps and metrics (goipd/callbacks/targets.py receiver_key computes the same).
    """
    CREATE TABLE status_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient_id INTEGER NOT NULL,
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
        at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        claimed_by TEXT,
        claimed_until REAL,
        last_error TEXT
    );
    CREATE INDEX status_events_due ON status_events (next_at);
    CREATE INDEX status_events_receiver ON status_events (receiver, id);
    CREATE INDEX status_events_age ON status_events (at);
    CREATE TRIGGER recipients_status_event AFTER UPDATE OF state ON recipients
    WHEN NEW.state IS NOT OLD.state
        AND NEW.state IN ('submitted', 'sent', 'delivered', 'failed', 'cancelled', 'expired')
    BEGIN
        INSERT INTO status_events (recipient_id, message_id, url, receiver, client, state,
            number, route, server, line, error_code, error_meaning, at, next_at)
        SELECT NEW.id, m.id, m.status_url,
            lower(substr(m.status_url, 1, instr(m.status_url, '://') + 2)
                || substr(replace(replace(substr(m.status_url, instr(m.status_url, '://') + 3)
                    || '/', '?', '/'), '#', '/'), 1,
                    instr(replace(replace(substr(m.status_url, instr(m.status_url, '://') + 3)
                    || '/', '?', '/'), '#', '/'), '/') - 1)),
            m.client, NEW.state, NEW.number, NEW.route, NEW.server, NEW.line,
            NEW.error_code, NEW.error_meaning, NEW.updated_at, NEW.updated_at
        FROM messages m
        WHERE m.id = NEW.message_id AND m.status_url IS NOT NULL
            AND instr(',' || coalesce(m.status_events, 'sent,delivered,failed,cancelled,expired')
                || ',', ',' || NEW.state || ',') > 0;
    END;
    """,
    # 10: what goipd learns and does to SIMs and modules (goipd/fleet/balances.py,
    # remediation.py): each line's last prepaid balance read by USSD (or why it could not be
    # read), and every automatic reboot, one row per line and incident, so that instances on
    # one ledger never reboot a line twice for one incident.
    """
    CREATE TABLE line_balances (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        balance REAL,
        answer TEXT,
        read_at REAL,
        error_reason TEXT,
        error TEXT,
        error_at REAL,
        PRIMARY KEY (server, line)
    );
    CREATE TABLE line_remediations (
        server TEXT NOT NULL,
        line TEXT NOT NULL,
        incident_since REAL NOT NULL,
        incident TEXT NOT NULL,
        action TEXT NOT NULL,
        owner TEXT NOT NULL,
        started_at REAL NOT NULL,
        result TEXT NOT NULL,
        finished_at REAL,
        detail TEXT,
        PRIMARY KEY (server, line, incident_since)
    );
    CREATE INDEX line_remediations_started ON line_remediations (server, started_at);
    """,
    # 11: the due index holds queued recipients only, and hand-overs waiting for their send_at
    # have an index of their own. With every recipient in it, each change of state moved an
    # entry of the due index: a report that a send succeeded wrote ~5 pages to the WAL, 2 of
    # them for an index no query reads past the queue (bench scenario 2).
    """
    DROP INDEX recipients_due;
    CREATE INDEX recipients_due ON recipients (priority, next_attempt_at)
        WHERE state = 'queued';
    CREATE INDEX recipients_handed_over ON recipients (next_attempt_at)
        WHERE state = 'submitted' AND route <> 'goip';
    """,
)
LATEST = len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """The complete SQL statements of `script` (a `;` inside a string or trigger is kept)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError("migration script ends inside a statement")


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, migrations: tuple[str, ...] = MIGRATIONS) -> int:
    """Bring the schema to the latest version; returns it. `conn` must be in autocommit mode
    (isolation_level=None)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for version in range(1, len(migrations) + 1):
        # The version is read again under the write lock: another process opening the same
        # file at the same moment may have applied this step already.
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = current_version(conn)
            if current > len(migrations):
                raise LedgerError(
                    f"ledger schema version {current} is newer than this goipd supports "
                    f"({len(migrations)}); upgrade goipd"
                )
            if current < version:
                for statement in statements(migrations[version - 1]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return len(migrations)
