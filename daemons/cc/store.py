"""The CC's store: one SQLite file (``state_dir/cc.db``) whose tables its parts keep
(nodes, security groups, public addresses), each through a connection of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *tables: str) -> sqlite3.Connection:
    """A connection for any thread (its owner serializes its use), in autocommit mode
    (a transaction is an explicit BEGIN), with ``tables`` (CREATE TABLE IF NOT EXISTS
    statements) made. WAL: readers never wait on the one writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for table in tables:
        db.execute(table)
    return db
