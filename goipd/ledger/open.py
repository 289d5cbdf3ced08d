"""The ledger the storage URL names: a SQLite file, or a PostgreSQL database."""

from __future__ import annotations

from goipd.config import Settings
from goipd.ledger.base import Ledger


def open_ledger(settings: Settings, instance_id: str) -> Ledger:
    path = settings.storage.sqlite_path
    if path is not None:
        from goipd.ledger.sqlite import SqliteLedger

        return SqliteLedger(path, instance_id=instance_id)
    from goipd.ledger.postgres import PostgresLedger

    return PostgresLedger(
        settings.storage.url, schema=settings.storage.pg_schema, instance_id=instance_id
    )
