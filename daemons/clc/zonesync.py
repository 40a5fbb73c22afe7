"""Every zone's CC holding what the records say its cluster is to enforce: the
security groups, for its nodes, and the elastic addresses of its instances, for its
router.

A group goes to the CCs while a live instance is in it, or while the rules of such a
group name it (the nodes need its members for those rules). Each goes as the nodes apply
it: its rules, and its members' private addresses across the cloud (EC2-Classic's
group-to-group rules also matched private addresses only; an instance with one NIC
counts by the address that NIC holds). An elastic address goes to
the CC of the zone its live instance runs in.

What a CC was last given is remembered per CC, so a sync sends only what changed; a CC
that did not answer is asked what it holds at the next sync, and is sent no instance
until it holds their groups.

Syncs run after a change commits (its answer waits for them: authorized means
enforced, associated means translated), before instances are sent (their groups, with
them as members, are on the CC first), and on every poll (members that ended, a CC that
was away).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.cc.client import CcClient
from mallee.clc import instances
from mallee.clc.db import Cluster, ElasticAddress, Instance, SecurityGroupRule, Sessions
from mallee.common.errors import MalleeError
from mallee.common.rpc import RemoteError
from mallee.nc.model import Rule, SecurityGroup

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
ZONE = ""  # among a sync's errors, the key of a zone's as a whole (no item is named "")


def enforced_groups(db: Session) -> dict[str, SecurityGroup]:
    """The groups the nodes are to hold, as they are to apply them."""
    members: dict[str, set[str]] = defaultdict(set)
    rows = db.execute(
        select(Instance.group_ids, Instance.private_ip, Instance.vlan, Instance.leased_ip).where(
            Instance.state.in_(instances.LIVE)
        )
    )
    for group_ids, private_ip, vlan, leased_ip in rows:
        # the address its packets leave from: its private NIC's, or, with one NIC only,
        # the address that NIC holds (leased by its zone in MANAGED and STATIC modes)
        address = leased_ip if vlan is None and leased_ip else private_ip
        for group_id in group_ids:
            members[group_id].update([address] if address else [])
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


def associated_addresses(db: Session) -> dict[str, dict[str, str]]:
    """Zone → elastic address → its live instance there."""
    rows = db.execute(
        select(Instance.zone, ElasticAddress.public_ip, Instance.instance_id)
        .join(Instance, Instance.instance_id == ElasticAddress.instance_id)
        .where(Instance.state.in_(instances.LIVE))
    )
    by_zone: dict[str, dict[str, str]] = defaultdict(dict)
    for zone, public_ip, instance_id in rows:
        by_zone[zone][public_ip] = instance_id
    return by_zone


@dataclass(frozen=True)
class Kind(Generic[Item]):
    """What a sync keeps in step: ``wanted`` reads what the CCs of these zones are to
    hold (zone → key → item; a zone not named holds none); the others are the CC's
    calls."""

    name: str
    wanted: Callable[[Session, list[str]], dict[str, dict[str, Item]]]
    held: Callable[[CcClient], dict[str, Item]]
    put: Callable[[CcClient, str, Item], None]
    delete: Callable[[CcClient, str], None]


SECURITY_GROUPS: Kind[SecurityGroup] = Kind(
    "security groups",
    lambda db, zones: dict.fromkeys(zones, enforced_groups(db)),  # every zone: all of them
    lambda cc: {g.group_id: g for g in cc.describe_security_groups()},
    lambda cc, _group_id, group: cc.put_security_group(group),
    lambda cc, group_id: cc.delete_security_group(group_id),
)

ELASTIC_ADDRESSES: Kind[str] = Kind(
    "elastic addresses",
    lambda db, _zones: associated_addresses(db),
    lambda cc: cc.describe_elastic_addresses(),
    lambda cc, public_ip, instance_id: cc.associate_address(public_ip, instance_id),
    lambda cc, public_ip: cc.disassociate_address(public_ip),
)


class ZoneSync(Generic[Item]):
    def __init__(
        self, sessions: Sessions, cc_client: Callable[[str], CcClient], kind: Kind[Item]
    ) -> None:
        self.sessions = sessions
        self.cc_client = cc_client
        self.kind = kind
        self._lock = threading.Lock()  # one sync at a time: none sends an older state
        self._given: dict[str, dict[str, Item]] = {}  # per CC URL, as last given

    def sync(self) -> dict[str, dict[str, MalleeError]]:
        """Bring every zone's CC in step with the records. What a CC refuses (4xx) is
        left out, item by item; a CC that does not answer is left whole; both are logged
        and tried again at the next sync. The errors, by zone and item (ZONE: the
        zone's as a whole)."""
        failed: dict[str, dict[str, MalleeError]] = {}
        with self._lock:
            with self.sessions.read.begin() as db:
                zones = [(c.name, c.url) for c in db.scalars(select(Cluster))]
                wanted = self.kind.wanted(db, [zone for zone, _ in zones])
            for url in set(self._given) - {url for _, url in zones}:
                del self._given[url]
            for zone, url in zones:
                try:
                    refused = self._sync_cc(url, self.cc_client(url), wanted.get(zone, {}))
                except MalleeError as e:
                    logger.warning("%s not synced to zone %s: %s", self.kind.name, zone, e.message)
                    self._given.pop(url, None)
                    failed[zone] = {ZONE: e}
                    continue
                for key, error in refused.items():
                    logger.warning("zone %s refuses %s: %s", zone, key, error.message)
                if refused:
                    failed[zone] = dict(refused)
        return failed

    def in_step(self, url: str) -> bool:
        """Whether the CC at ``url`` answered the last sync (so holds what it is to)."""
        with self._lock:
            return url in self._given

    def forget(self, url: str) -> None:
        """The CC at ``url`` may have lost what it was given: ask it at the next sync."""
        with self._lock:
            self._given.pop(url, None)

    def _sync_cc(
        self, url: str, client: CcClient, wanted: dict[str, Item]
    ) -> dict[str, RemoteError]:
        """The items the CC refused."""
        given = self._given.get(url)
        if given is None:
            given = self.kind.held(client)
        self._given[url] = given
        refused: dict[str, RemoteError] = {}
        for key, item in wanted.items():
            if given.get(key) != item:
                try:
                    self.kind.put(client, key, item)
                except RemoteError as e:
                    if not 400 <= e.status < 500:
                        raise
                    refused[key] = e
                    continue
                given[key] = item
        for key in sorted(set(given) - set(wanted)):
            try:
                self.kind.delete(client, key)
            except RemoteError as e:
                if e.status != 404:  # gone already
                    raise
            del given[key]
        return refused
