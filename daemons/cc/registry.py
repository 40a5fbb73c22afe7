"""Registered nodes, kept in SQLite under ``state_dir`` so a CC restart keeps them."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from mallee.cc import store
from mallee.cc.model import Node
from mallee.common.errors import NodeAlreadyRegistered, NodeNotFound


class NodeRegistry:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._saved: dict[str, float] = {}  # per node, when the poll saved last began
        self._db = store.connect(
            path,
            "CREATE TABLE IF NOT EXISTS nodes ("
            " position INTEGER PRIMARY KEY AUTOINCREMENT,"
            " name TEXT NOT NULL UNIQUE, url TEXT NOT NULL UNIQUE,"
            " registered_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS reports ("
            " name TEXT PRIMARY KEY, last_seen REAL NOT NULL, instances TEXT NOT NULL)",
        )

    def all(self) -> list[Node]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, url, position, registered_at FROM nodes ORDER BY position"
            ).fetchall()
        return [Node(*row) for row in rows]

    def reports(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """Each node's last report: when it was seen, and its instances."""
        with self._lock:
            rows = self._db.execute("SELECT name, last_seen, instances FROM reports").fetchall()
        return {name: (seen, json.loads(instances)) for name, seen, instances in rows}

    def save_report(
        self, name: str, polled_at: float, last_seen: float, instances: dict[str, Any]
    ) -> None:
        """Keep a node's instances, so a CC restarted while the node is down still
        lists them (as unreachable). ``polled_at`` (monotonic: when the poll began)
        orders reports, so one arriving late never replaces a newer one, whatever the
        wall clock did; ``last_seen`` (wall clock) is for people to read."""
        with self._lock:
            if polled_at < self._saved.get(name, float("-inf")):
                return
            self._saved[name] = polled_at
            self._db.execute(
                "INSERT INTO reports VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET last_seen = excluded.last_seen, instances = excluded.instances",
                (name, last_seen, json.dumps(instances)),
            )

    def add(self, name: str, url: str) -> Node:
        url = normalise_url(url)
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
            self._saved.pop(name, None)
            self._db.execute("DELETE FROM reports WHERE name = ?", (name,))
            if self._db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount == 0:
                raise NodeNotFound(f"node {name} is not registered")


def normalise_url(url: str) -> str:
    """One spelling per NC: lower-case scheme and host, no trailing slash."""
    parts = urllib.parse.urlsplit(url.rstrip("/"))
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "", "", ""))
