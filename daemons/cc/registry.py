"""Registered nodes, kept in SQLite under ``state_dir`` so a CC restart keeps them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from mallee.cc.model import Node
from mallee.common.errors import NodeAlreadyRegistered, NodeNotFound


class NodeRegistry:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS nodes ("
            " position INTEGER PRIMARY KEY AUTOINCREMENT,"
            " name TEXT NOT NULL UNIQUE, url TEXT NOT NULL UNIQUE,"
            " registered_at REAL NOT NULL)"
        )

    def all(self) -> list[Node]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, url, position, registered_at FROM nodes ORDER BY position"
            ).fetchall()
        return [Node(*row) for row in rows]

    def add(self, name: str, url: str) -> Node:
        with self._lock:
            clash = self._db.execute(
                "SELECT name, url FROM nodes WHERE name = ? OR url = ?", (name, url)
            ).fetchone()
            if clash:
                raise NodeAlreadyRegistered(
                    f"node {clash[0]} at {clash[1]} is already registered (asked: {name} at {url})"
                )
            now = time.time()
            cursor = self._db.execute(
                "INSERT INTO nodes (name, url, registered_at) VALUES (?, ?, ?)", (name, url, now)
            )
            assert cursor.lastrowid is not None
            return Node(name, url, cursor.lastrowid, now)

    def remove(self, name: str) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount == 0:
                raise NodeNotFound(f"node {name} is not registered")
