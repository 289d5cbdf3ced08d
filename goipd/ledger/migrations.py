"""Schema versions of the SQLite ledger, applied in order at start-up, each in one transaction."""

from __future__ import annotations

import sqlite3

from goipd.ledger.base import LedgerError

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
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; returns it."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > len(MIGRATIONS):
        raise LedgerError(
            f"ledger schema version {current} is newer than this goipd supports "
            f"({len(MIGRATIONS)}); upgrade goipd"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
