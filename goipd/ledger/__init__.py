"""Durable message store: one interface (base.Ledger), SQLite and PostgreSQL backends."""
