"""Every zone's CC holding the security groups as the records say, for its nodes to
enforce.

A group goes to the CCs while a live instance is in it, or while the rules of such a
group name it (the nodes need its members for those rules). Each goes as the nodes apply
it: its rules, and its members' private addresses across the cloud (EC2-Classic's
group-to-group rules also matched private addresses only). What a CC was last given is
remembered per CC, so a sync sends only what changed; a CC that did not answer is asked
what it holds at the next sync, and is sent no instance until it holds their groups.

Syncs run after a rule change commits (its answer waits for them: authorized means
enforced), before instances are sent (their groups, with them as members, are on the
CC first), and on every poll (members that ended, a CC that was away).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.cc.client import CcClient
from mallee.clc import instances
from mallee.clc.db import Cluster, Instance, SecurityGroupRule, Sessions
from mallee.common.errors import MalleeError
from mallee.common.rpc import RemoteError
from mallee.nc.model import Rule, SecurityGroup

logger = logging.getLogger(__name__)


def enforced_groups(db: Session) -> dict[str, SecurityGroup]:
    """The groups the nodes are to hold, as they are to apply them."""
    members: dict[str, set[str]] = defaultdict(set)
    rows = db.execute(
        select(Instance.group_ids, Instance.private_ip).where(Instance.state.in_(instances.LIVE))
    )
    for group_ids, private_ip in rows:
        for group_id in group_ids:
            members[group_id].update([private_ip] if private_ip else [])
    rules = db.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.group_id.in_(members))
        .order_by(SecurityGroupRule.rule_id)
    ).all()
    named = {r.peer_group_id for r in rules if r.peer_group_id} - set(members)
    by_group: dict[str, dict[str, list[Rule]]] = defaultdict(lambda: defaultdict(list))
    for r in rules:
        rule = Rule(r.protocol, r.from_port, r.to_port, r.cidr, r.peer_group_id)
        by_group[r.group_id][r.direction].append(rule)
    return {
        group_id: SecurityGroup(
            group_id,
            members=tuple(sorted(members.get(group_id, ()))),
            ingress=tuple(by_group[group_id]["ingress"]),
            egress=tuple(by_group[group_id]["egress"]),
        )
        for group_id in sorted(members.keys() | named)
    }


class GroupSync:
    def __init__(self, sessions: Sessions, cc_client: Callable[[str], CcClient]) -> None:
        self.sessions = sessions
        self.cc_client = cc_client
        self._lock = threading.Lock()  # one sync at a time: none sends an older state
        self._given: dict[str, dict[str, SecurityGroup]] = {}  # per CC URL, as last given

    def sync(self) -> None:
        """Bring every zone's CC in step with the records; a CC that does not answer
        is logged and left for the next sync."""
        with self._lock:
            with self.sessions.read.begin() as db:
                wanted = enforced_groups(db)
                zones = [(c.name, c.url) for c in db.scalars(select(Cluster))]
            for url in set(self._given) - {url for _, url in zones}:
                del self._given[url]
            for zone, url in zones:
                try:
                    self._sync_cc(url, self.cc_client(url), wanted)
                except MalleeError as e:
                    logger.warning("security groups not synced to zone %s: %s", zone, e.message)
                    self._given.pop(url, None)

    def in_step(self, url: str) -> bool:
        """Whether the CC at ``url`` answered the last sync (so holds the groups)."""
        with self._lock:
            return url in self._given

    def forget(self, url: str) -> None:
        """The CC at ``url`` may have lost what it was given: ask it at the next sync."""
        with self._lock:
            self._given.pop(url, None)

    def _sync_cc(self, url: str, client: CcClient, wanted: dict[str, SecurityGroup]) -> None:
        given = self._given.get(url)
        if given is None:
            given = {g.group_id: g for g in client.describe_security_groups()}
        self._given[url] = given
        for group_id, group in wanted.items():
            if given.get(group_id) != group:
                client.put_security_group(group)
                given[group_id] = group
        for group_id in sorted(set(given) - set(wanted)):
            try:
                client.delete_security_group(group_id)
            except RemoteError as e:
                if e.status != 404:  # gone already
                    raise
            del given[group_id]
