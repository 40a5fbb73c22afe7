"""The cluster's security groups, kept in the CC's store so a restart loses none.

The CLC puts each group as the nodes are to apply it (its rules, its members' addresses);
the CC keeps it and puts it on every node that answers. A node that missed a change (it
did not answer, was registered since, or this CC restarted) is brought in step before its
next poll counts: every group put again, and the groups the cluster no longer has taken
away.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from mallee.cc import store
from mallee.nc.model import SecurityGroup


class GroupStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = store.connect(
            path,
            "CREATE TABLE IF NOT EXISTS security_groups ("
            " group_id TEXT PRIMARY KEY, document TEXT NOT NULL)",
        )

    def all(self) -> list[SecurityGroup]:
        with self._lock:
            rows = self._db.execute(
                "SELECT group_id, document FROM security_groups ORDER BY group_id"
            ).fetchall()
        return [SecurityGroup.from_api(group_id, json.loads(doc)) for group_id, doc in rows]

    def put(self, group: SecurityGroup) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO security_groups VALUES (?, ?) ON CONFLICT (group_id)"
                " DO UPDATE SET document = excluded.document",
                (group.group_id, json.dumps(group.to_api())),
            )

    def delete(self, group_id: str) -> bool:
        """Whether the cluster had the group."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM security_groups WHERE group_id = ?", (group_id,))
            return cursor.rowcount > 0
