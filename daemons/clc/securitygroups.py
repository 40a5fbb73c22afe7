"""Security groups as EC2 keeps them: each user's named sets of allowed flows, ingress
and egress, from or to address ranges or the members of another group.

Here they are the CLC's records behind the EC2 API; the CC enforces them on packets
(the networking issue). Every user has a group named "default" (made when first
needed); a new group allows all egress, as EC2's VPC groups do, and no ingress.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc.db import Instance, SecurityGroup, SecurityGroupRule, flush_or
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error

DEFAULT = "default"
INGRESS, EGRESS = "ingress", "egress"
GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp"}
ALL = "-1"  # every protocol, every port


@dataclass(frozen=True)
class Flow:
    """One allowed flow, as stored: a protocol and its port (or ICMP type and code)
    range, and either a CIDR or a peer group."""

    protocol: str
    from_port: int
    to_port: int
    cidr: str = ""
    peer_group_id: str = ""


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(9)[:17]


def _text(value: str, what: str) -> str:
    if not value or len(value) > 255 or not all(" " <= c <= "~" for c in value):
        raise Ec2Error("InvalidParameterValue", f"{what} is 1 to 255 printable ASCII characters")
    return value


def _make(db: Session, owner: str, name: str, description: str) -> SecurityGroup:
    group = SecurityGroup(group_id=_new_id("sg-"), owner=owner, name=name, description=description)
    db.add(group)
    flush_or(db, Ec2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists"))
    db.add(_rule(group.group_id, EGRESS, Flow(ALL, -1, -1, cidr="0.0.0.0/0")))
    return group


def _rule(group_id: str, direction: str, flow: Flow) -> SecurityGroupRule:
    return SecurityGroupRule(
        rule_id=_new_id("sgr-"),
        group_id=group_id,
        direction=direction,
        protocol=flow.protocol,
        from_port=flow.from_port,
        to_port=flow.to_port,
        cidr=flow.cidr,
        peer_group_id=flow.peer_group_id,
    )


def default_group(db: Session, owner: str) -> SecurityGroup:
    """The user's default group; made, as EC2 makes it, letting in all that its own
    members send (and out, as every new group, everything)."""
    query = select(SecurityGroup).where(SecurityGroup.owner == owner, SecurityGroup.name == DEFAULT)
    found = db.scalars(query).first()
    if found is None:
        found = _make(db, owner, DEFAULT, "default group")
        db.add(_rule(found.group_id, INGRESS, Flow(ALL, -1, -1, peer_group_id=found.group_id)))
    return found


def create(db: Session, caller: Caller, name: str, description: str) -> SecurityGroup:
    _text(name, "GroupName")
    _text(description, "GroupDescription")
    if name.startswith("sg-"):
        raise Ec2Error("InvalidParameterValue", "Group names may not begin with sg-")
    if name == DEFAULT:
        raise Ec2Error("InvalidGroup.Reserved", "The security group 'default' is reserved")
    return _make(db, caller.user, name, description)


def find(
    db: Session,
    owner: str,
    group_id: str | None,
    name: str | None,
    anyones: bool = False,
    lock: str = "",
) -> SecurityGroup:
    """``owner``'s group of that id or name (with ``anyones``, any user's by id: what
    an admin may see). ``lock`` holds the row until the request's transaction ends:
    "delete" against everyone, "keep" against a delete only (requests that keep it
    wait for no other, and two naming each other's groups do not deadlock). SQLite
    has no row locks: there the checks after the writes do it."""
    if group_id:
        if not GROUP_ID.fullmatch(group_id):
            raise Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{group_id}"')
        query = select(SecurityGroup).where(SecurityGroup.group_id == group_id)
        if not anyones:
            query = query.where(SecurityGroup.owner == owner)
        missing = group_id
    elif name:
        if name == DEFAULT:
            default_group(db, owner)
        query = select(SecurityGroup).where(
            SecurityGroup.owner == owner, SecurityGroup.name == name
        )
        missing = name
    else:
        raise Ec2Error("MissingParameter", "The request must contain the parameter GroupId")
    if lock:
        query = query.with_for_update(read=lock == "keep", key_share=lock == "keep")
    group = db.scalars(query).first()
    if group is None:
        raise Ec2Error("InvalidGroup.NotFound", f"The security group '{missing}' does not exist")
    return group


def describe(
    db: Session, caller: Caller, names: list[str], ids: list[str]
) -> list[tuple[SecurityGroup, list[SecurityGroupRule]]]:
    default_group(db, caller.user)
    if names or ids:
        groups = [find(db, caller.user, None, n) for n in names]
        groups += [find(db, caller.user, i, None, anyones=caller.admin) for i in ids]
    else:
        query = select(SecurityGroup).order_by(SecurityGroup.owner, SecurityGroup.created_at)
        if not caller.admin:
            query = query.where(SecurityGroup.owner == caller.user)
        groups = list(db.scalars(query))
    return [(g, rules_of(db, g.group_id)) for g in groups]


def by_ids(db: Session, group_ids: set[str]) -> list[SecurityGroup]:
    """The groups of these ids that exist (instances name theirs by id)."""
    query = select(SecurityGroup).where(SecurityGroup.group_id.in_(group_ids))
    return list(db.scalars(query))


def rules_of(db: Session, group_id: str) -> list[SecurityGroupRule]:
    query = select(SecurityGroupRule).where(SecurityGroupRule.group_id == group_id)
    return list(db.scalars(query.order_by(SecurityGroupRule.rule_id)))


def delete(db: Session, group: SecurityGroup) -> None:
    if group.name == DEFAULT:
        raise Ec2Error("CannotDelete", "the default security group cannot be deleted")
    query = select(SecurityGroupRule).where(
        SecurityGroupRule.peer_group_id == group.group_id,
        SecurityGroupRule.group_id != group.group_id,
    )
    db.delete(group)
    db.flush()  # the write first (SQLite: its lock), then the checks: nothing comes between
    if (user := db.scalars(query).first()) is not None:
        raise Ec2Error(
            "DependencyViolation",
            f"resource {group.group_id} has a dependent object: a rule of {user.group_id}",
        )
    live = select(Instance.instance_id, Instance.group_ids).where(
        Instance.owner == group.owner, Instance.state != "terminated"
    )
    if members := sorted(i for i, groups in db.execute(live) if group.group_id in groups):
        raise Ec2Error(
            "DependencyViolation",
            f"resource {group.group_id} has a dependent object: instance {members[0]}",
        )


def flows(db: Session, group: SecurityGroup, params: dict[str, Any]) -> list[Flow]:
    """The flows a request names for ``group``: ``IpPermissions``, or EC2's older flat
    form: ``IpProtocol``/``FromPort``/``ToPort``/``CidrIp``, or a whole peer group
    (``SourceSecurityGroupName``: all of TCP, UDP and ICMP from its members, as
    EC2-Classic gave it). Peer groups are the group owner's own."""
    flat = {k: params[k] for k in ("IpProtocol", "FromPort", "ToPort", "CidrIp") if k in params}
    source = params.get("SourceSecurityGroupName")
    permissions = list(params.get("IpPermissions", []))
    if (flat or source) and permissions:
        raise Ec2Error(
            "InvalidParameterCombination", "Give IpPermissions or the flat form, not both"
        )
    if flat and source:
        raise Ec2Error(
            "InvalidParameterCombination",
            "SourceSecurityGroupName allows a whole group: it takes no protocol, ports or CIDR",
        )
    if source:
        _same_owner(group, params.get("SourceSecurityGroupOwnerId"))
        pair = [{"GroupName": source}]
        permissions = [
            {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": pair},
            {"IpProtocol": "udp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": pair},
            {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "UserIdGroupPairs": pair},
        ]
    elif flat:
        permission: dict[str, Any] = {"IpProtocol": flat.get("IpProtocol", ALL)}
        permission |= {k: flat[k] for k in ("FromPort", "ToPort") if k in flat}
        if "CidrIp" in flat:
            permission["IpRanges"] = [{"CidrIp": flat["CidrIp"]}]
        permissions = [permission]
    if not permissions:
        raise Ec2Error("MissingParameter", "The request must contain IpPermissions")
    return [flow for p in permissions for flow in _flows_of(db, group, p)]


def _same_owner(group: SecurityGroup, user_id: str | None) -> None:
    if user_id not in (None, "", group.owner):
        raise Ec2Error(
            "InvalidParameterValue",
            f"Rules may name only groups of {group.owner}, the owner of {group.group_id}",
        )


def _flows_of(db: Session, group: SecurityGroup, permission: dict[str, Any]) -> Iterable[Flow]:
    protocol, low, high = _ports(permission)
    cidrs = [_cidr(r.get("CidrIp", "")) for r in permission.get("IpRanges", [])]
    peers = []
    for pair in permission.get("UserIdGroupPairs", []):
        _same_owner(group, pair.get("UserId"))
        # held until the request ends: a concurrent delete of the peer waits
        peer = find(db, group.owner, pair.get("GroupId"), pair.get("GroupName"), lock="keep")
        peers.append(peer.group_id)
    if permission.get("Ipv6Ranges") or permission.get("PrefixListIds"):
        raise Ec2Error("InvalidParameterValue", "IPv6 ranges and prefix lists are not supported")
    if not cidrs and not peers:
        raise Ec2Error(
            "MissingParameter", "A rule needs IpRanges (CidrIp) or UserIdGroupPairs (a group)"
        )
    yield from (Flow(protocol, low, high, cidr=c) for c in cidrs)
    yield from (Flow(protocol, low, high, peer_group_id=g) for g in peers)


def _ports(permission: dict[str, Any]) -> tuple[str, int, int]:
    raw = str(permission.get("IpProtocol", "")).lower()
    if raw in (ALL, "all"):
        return ALL, -1, -1
    protocol = PROTOCOLS.get(raw)
    if protocol is None:
        raise Ec2Error(
            "InvalidParameterValue", f"Invalid IP protocol {raw!r}: tcp, udp, icmp or -1"
        )
    low, high = permission.get("FromPort"), permission.get("ToPort")
    if low is None or high is None:
        raise Ec2Error("MissingParameter", f"A {protocol} rule needs FromPort and ToPort")
    if protocol == "icmp":  # type and code
        if not (-1 <= low <= 255 and -1 <= high <= 255) or (low == -1 and high != -1):
            raise Ec2Error(
                "InvalidParameterValue", "ICMP type and code are -1 to 255 (any type: any code)"
            )
    elif not (0 <= low <= high <= 65535):
        raise Ec2Error(
            "InvalidParameterValue", f"Invalid port range {low}-{high}: 0 to 65535, from ≤ to"
        )
    return protocol, low, high


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=False))
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"Invalid IPv4 CIDR: {text!r}") from None


def authorize(db: Session, group: SecurityGroup, direction: str, wanted: list[Flow]) -> None:
    existing = {_flow(r) for r in rules_of(db, group.group_id) if r.direction == direction}
    if duplicate := [f for f in wanted if f in existing]:
        raise _duplicate(duplicate[0])
    for flow in dict.fromkeys(wanted):
        db.add(_rule(group.group_id, direction, flow))
    gone = Ec2Error(
        "InvalidGroup.NotFound", f"The security group '{group.group_id}' does not exist"
    )
    flush_or(db, _duplicate(wanted[0]), gone)  # a concurrent request made one, or deleted it
    # after the write (SQLite: its lock), a peer deleted meanwhile is seen to be gone
    peers = {f.peer_group_id for f in wanted if f.peer_group_id}
    there = set(db.scalars(select(SecurityGroup.group_id).where(SecurityGroup.group_id.in_(peers))))
    if missing := sorted(peers - there):
        raise Ec2Error("InvalidGroup.NotFound", f"The security group '{missing[0]}' does not exist")


def _duplicate(flow: Flow) -> Ec2Error:
    return Ec2Error(
        "InvalidPermission.Duplicate", f'the specified rule "{_describe(flow)}" already exists'
    )


def revoke(db: Session, group: SecurityGroup, direction: str, wanted: list[Flow]) -> None:
    rules = {_flow(r): r for r in rules_of(db, group.group_id) if r.direction == direction}
    if missing := [f for f in wanted if f not in rules]:
        raise Ec2Error(
            "InvalidPermission.NotFound",
            f"The specified rule does not exist in this security group: {_describe(missing[0])}",
        )
    for flow in dict.fromkeys(wanted):
        db.delete(rules[flow])


def _flow(rule: SecurityGroupRule) -> Flow:
    return Flow(rule.protocol, rule.from_port, rule.to_port, rule.cidr, rule.peer_group_id)


def _describe(flow: Flow) -> str:
    source = flow.cidr or flow.peer_group_id
    return f"{flow.protocol} {flow.from_port}-{flow.to_port} {source}"


def permissions(
    db: Session, rules: list[SecurityGroupRule], direction: str
) -> list[dict[str, Any]]:
    """Rules of one direction in EC2's shape: one permission per protocol and ports,
    with its address ranges and peer groups."""
    grouped: dict[tuple[str, int, int], list[SecurityGroupRule]] = defaultdict(list)
    for rule in rules:
        if rule.direction == direction:
            grouped[(rule.protocol, rule.from_port, rule.to_port)].append(rule)
    answer = []
    for (protocol, low, high), members in grouped.items():
        permission: dict[str, Any] = {
            "IpProtocol": protocol,
            "IpRanges": [{"CidrIp": r.cidr} for r in members if r.cidr],
            "UserIdGroupPairs": [_pair(db, r.peer_group_id) for r in members if r.peer_group_id],
            "Ipv6Ranges": [],
            "PrefixListIds": [],
        }
        if protocol != ALL:
            permission |= {"FromPort": low, "ToPort": high}
        answer.append(permission)
    return answer


def _pair(db: Session, group_id: str) -> dict[str, str]:
    peer = db.get(SecurityGroup, group_id)
    pair = {"GroupId": group_id}
    if peer is not None:
        pair |= {"GroupName": peer.name, "UserId": peer.owner}
    return pair
