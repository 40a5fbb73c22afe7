"""Security groups and anti-spoofing on the node's instance NICs, as nftables rulesets.

Every packet to or from an instance crosses a bridge on its node, whatever the public
mode or the overlay; so the node is where the rules hold, and its CC says what they are
(docs/architecture.md, "Networking"). Two tables of the node's own, rebuilt whole in one
transaction on every change:

- ``bridge``: what may leave each instance's tap at all (its own MAC, its own addresses,
  ARP and IPv4 only, no DHCP answers) and what a tap may be sent (frames for its MAC,
  broadcast and multicast: no other instance's unicast on a shared bridge).
- ``inet``: the security groups, stateful. This kernel has no connection tracking in
  the bridge family, so bridged IPv4 is filtered in the inet forward hook, which
  br_netfilter lets it pass; there the port is not known, so instances are told apart
  by MAC (each tap may send only its own, by the bridge table).

An instance's chain accepts the replies of the flows it may have, then what its groups'
rules allow, and drops the rest. The rules are checked on every packet a flow's opener
sends, not only its first, so a revoked rule cuts flows at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mallee.common import nftables
from mallee.common.errors import HostCommandFailed, NetworkSetupFailed
from mallee.common.nftables import Expr, ct, field, match, meta
from mallee.nc.model import Rule, SecurityGroup

# What an instance may always do, whatever its egress rules: ask for its address and its
# metadata (EC2 allows both in every group).
METADATA_ADDRESS = "169.254.169.254"


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Port:
    """An instance NIC: its tap, its MAC, the addresses it may send from (none known: any,
    as in SYSTEM mode, where the site's DHCP gives them) and its groups (None: no group
    filtering, only the anti-spoofing)."""

    device: str
    mac: str
    addresses: tuple[str, ...]
    group_ids: tuple[str, ...] | None


def table_name(node_name: str) -> str:
    """The node's tables (one per family): several NCs may share a host in tests."""
    return nftables.table_name("nc", node_name)


# -- expressions ------------------------------------------------------------------------


def _set(values: Iterable[Any]) -> dict[str, list[Any]]:
    return {"set": sorted(values)}


def _cidr(text: str) -> Any:
    address, _, length = text.partition("/")
    if not length or length == "32":
        return address
    return {"prefix": {"addr": address, "len": int(length)}}


DROP: Expr = {"drop": None}
RETURN: Expr = {"return": None}
DHCP_REQUEST = [match(field("udp", "sport"), 68), match(field("udp", "dport"), 67)]
DHCP_REPLY = [match(field("udp", "sport"), 67), match(field("udp", "dport"), 68)]
ANSWER = [match(ct("direction"), "reply")]  # a packet of a flow the other side opened


class Ruleset:
    """The node's two tables for ``ports`` under ``groups``, as nft commands."""

    def __init__(self, table: str, ports: list[Port], groups: dict[str, SecurityGroup]):
        self.table = table
        self.ports = sorted(ports, key=lambda p: p.device)
        self.groups = groups

    def build(self) -> list[nftables.Command]:
        bridge = self._bridge_table()
        inet = self._inet_table()
        return [
            *nftables.replace_table("bridge", self.table, bridge),
            *nftables.replace_table("inet", self.table, inet),
        ]

    # -- the bridge table: who may send what -------------------------------------------

    def _bridge_table(self) -> list[nftables.Command]:
        family = "bridge"
        commands = [
            self._chain(family, "from_instance", hook="prerouting"),
            self._chain(family, "to_instance", hook="postrouting"),
        ]
        sent: list[Any] = []
        received: list[Any] = []
        for port in self.ports:
            sender, receiver = f"from_{port.device}", f"to_{port.device}"
            commands += [self._chain(family, sender), self._chain(family, receiver)]
            commands += [self._rule(family, sender, r) for r in _sender_rules(port)]
            commands += [self._rule(family, receiver, r) for r in _receiver_rules(port)]
            sent.append([port.device, {"jump": {"target": sender}}])
            received.append([port.device, {"jump": {"target": receiver}}])
        if sent:
            commands.append(self._rule(family, "from_instance", [_vmap(meta("iifname"), sent)]))
            commands.append(self._rule(family, "to_instance", [_vmap(meta("oifname"), received)]))
        return commands

    # -- the inet table: the security groups -------------------------------------------

    def _inet_table(self) -> list[nftables.Command]:
        family = "inet"
        commands = [
            self._chain(family, "forward", hook="forward"),
            self._chain(family, "input", hook="input"),
        ]
        filtered = [port for port in self.ports if port.group_ids is not None]
        named = {
            rule.group_id
            for port in filtered
            for group_id in port.group_ids or ()
            for rule in (*self._group(group_id).ingress, *self._group(group_id).egress)
            if rule.group_id
        }
        for group_id in sorted(named):
            members = self.groups[group_id].members if group_id in self.groups else ()
            commands.append(_named_set(family, self.table, group_id, members))
        outbound: list[Any] = []
        inbound: list[Any] = []
        for port in filtered:
            egress, ingress = f"egress_{port.device}", f"ingress_{port.device}"
            commands += [self._chain(family, egress), self._chain(family, ingress)]
            commands += [self._rule(family, egress, r) for r in self._egress_rules(port)]
            commands += [self._rule(family, ingress, r) for r in self._ingress_rules(port)]
            outbound.append([port.mac, {"jump": {"target": egress}}])
            inbound.append([port.mac, {"jump": {"target": ingress}}])
        if outbound:
            by_source = [_vmap(field("ether", "saddr"), outbound)]
            by_destination = [_vmap(field("ether", "daddr"), inbound)]
            commands.append(self._rule(family, "forward", by_source))
            commands.append(self._rule(family, "forward", by_destination))
            commands.append(self._rule(family, "input", by_source))  # to the node itself
        return commands

    def _group(self, group_id: str) -> SecurityGroup:
        # A group the node was not told of allows nothing (the node refuses to launch
        # an instance in one; this covers a group deleted while in use).
        return self.groups.get(group_id) or SecurityGroup(group_id)

    def _egress_rules(self, port: Port) -> list[list[Expr]]:
        always = [
            [match(ct("state"), "invalid"), DROP],
            [*ANSWER, RETURN],
            [*DHCP_REQUEST, RETURN],
            [
                # as the guest sent it, should the node's host redirect it (DNAT)
                match({"ct": {"key": "ip daddr", "dir": "original"}}, METADATA_ADDRESS),
                match(field("tcp", "dport"), 80),
                RETURN,
            ],
        ]
        allowed = [
            [*_flow(rule, "daddr"), RETURN]
            for group_id in port.group_ids or ()
            for rule in self._group(group_id).egress
        ]
        return [*always, *allowed, [DROP]]

    def _ingress_rules(self, port: Port) -> list[list[Expr]]:
        always = [
            [match(ct("state"), "invalid"), DROP],
            [*ANSWER, RETURN],
            [*DHCP_REPLY, RETURN],
        ]
        allowed = [
            [*_flow(rule, "saddr"), RETURN]
            for group_id in port.group_ids or ()
            for rule in self._group(group_id).ingress
        ]
        return [*always, *allowed, [DROP]]

    def _chain(self, family: str, name: str, hook: str = "") -> nftables.Command:
        chain: dict[str, Any] = {"family": family, "table": self.table, "name": name}
        if hook:
            chain |= {"type": "filter", "hook": hook, "prio": 0, "policy": "accept"}
        return {"add": {"chain": chain}}

    def _rule(self, family: str, chain: str, expr: list[Expr]) -> nftables.Command:
        return {
            "add": {"rule": {"family": family, "table": self.table, "chain": chain, "expr": expr}}
        }


def _vmap(key: Expr, entries: list[Any]) -> Expr:
    return {"vmap": {"key": key, "data": {"set": entries}}}


def _named_set(
    family: str, table: str, group_id: str, members: tuple[str, ...]
) -> nftables.Command:
    named: dict[str, Any] = {
        "family": family,
        "table": table,
        "name": _set_name(group_id),
        "type": "ipv4_addr",
    }
    if members:
        named["elem"] = sorted(members)
    return {"add": {"set": named}}


def _set_name(group_id: str) -> str:
    return f"members_{group_id.replace('-', '_')}"


def _sender_rules(port: Port) -> list[list[Expr]]:
    """What a tap may put on its bridge: its own MAC, ARP for its own addresses, IPv4 from
    them (or 0.0.0.0 asking DHCP), nothing for a DHCP client's port (no answer of a
    rogue DHCP server), nothing else (no IPv6, no VLAN tags)."""
    rules = [
        [match(field("ether", "saddr"), port.mac, "!="), DROP],
        [match(field("ether", "type"), _set(["arp", "ip"]), "!="), DROP],
        [match(field("arp", "saddr ether"), port.mac, "!="), DROP],
        [match(field("udp", "dport"), 68), DROP],
    ]
    if port.addresses:
        rules += [
            [match(field("arp", "saddr ip"), _set({"0.0.0.0", *port.addresses}), "!="), DROP],
            [match(field("ip", "saddr"), "0.0.0.0"), *DHCP_REQUEST, RETURN],
            [match(field("ip", "saddr"), _set(port.addresses), "!="), DROP],
        ]
    return rules


def _receiver_rules(port: Port) -> list[list[Expr]]:
    """A tap is sent frames for its own MAC, and of broadcast and multicast only ARP and
    DHCP's answers (EC2 carries no broadcast or multicast). On a shared bridge no other
    instance's unicast (flooded while the bridge learns) reaches it; and no IPv4 comes
    in a broadcast frame, where the security groups (which find an instance by its MAC)
    would not see it."""
    group_bit = {"&": [field("ether", "daddr"), "01:00:00:00:00:00"]}
    return [
        [match(field("ether", "daddr"), port.mac), RETURN],
        [match(group_bit, "00:00:00:00:00:00"), DROP],  # another's unicast
        [match(field("ether", "type"), "arp"), RETURN],
        [*DHCP_REPLY, RETURN],
        [DROP],
    ]


def _flow(rule: Rule, peer_field: str) -> list[Expr]:
    """The matches of one rule; the peer is the packet's source (ingress) or
    destination (egress)."""
    expr: list[Expr] = []
    if rule.group_id:
        expr.append(match(field("ip", peer_field), f"@{_set_name(rule.group_id)}"))
    elif rule.cidr != "0.0.0.0/0":
        expr.append(match(field("ip", peer_field), _cidr(rule.cidr)))
    else:
        expr.append(match(meta("nfproto"), "ipv4"))
    if rule.protocol == "icmp":
        expr.append(match(meta("l4proto"), "icmp"))
        if rule.from_port != -1:
            expr.append(match(field("icmp", "type"), rule.from_port))
        if rule.to_port != -1:
            expr.append(match(field("icmp", "code"), rule.to_port))
    elif rule.protocol in ("tcp", "udp"):
        ports: Any = rule.from_port
        if rule.from_port != rule.to_port:
            ports = {"range": [rule.from_port, rule.to_port]}
        expr.append(match(field(rule.protocol, "dport"), ports))
    return expr


class Firewall:
    """The node's groups (kept in ``path``, so a restarted NC applies the same rules
    before its CC says anything) and the ruleset they make with its instances' ports.
    ``ports`` is asked under the firewall's lock, so rulesets are applied in the order
    their states were read."""

    def __init__(self, node_name: str, path: Path) -> None:
        self.table = table_name(node_name)
        self.path = path
        self._lock = threading.Lock()
        self._removed = False  # known to have no table (a restart may have left some)
        self.groups: dict[str, SecurityGroup] = {}
        if path.exists():
            saved = json.loads(path.read_text())
            self.groups = {g: SecurityGroup.from_api(g, d) for g, d in saved.items()}

    def put_group(self, group: SecurityGroup, ports: Callable[[], list[Port]]) -> None:
        self._change(self.groups | {group.group_id: group}, ports)

    def delete_group(self, group_id: str, ports: Callable[[], list[Port]]) -> None:
        self._change({g: v for g, v in self.groups.items() if g != group_id}, ports)

    def _change(self, groups: dict[str, SecurityGroup], ports: Callable[[], list[Port]]) -> None:
        """Apply ``groups``, then keep them: a set the kernel refused is not kept."""
        with self._lock:
            self._apply(ports(), groups)
            self._save(groups)

    def apply(self, ports: Callable[[], list[Port]]) -> None:
        with self._lock:
            self._apply(ports(), self.groups)

    def _apply(self, ports: list[Port], groups: dict[str, SecurityGroup]) -> None:
        """The node's tables for ``ports``; none at all while it has no instance."""
        if not ports:
            self._remove()
            return
        try:
            nftables.apply(Ruleset(self.table, ports, groups).build())
        except HostCommandFailed as e:
            raise NetworkSetupFailed(f"the node's firewall: {e.message}") from e
        self._removed = False

    def _remove(self) -> None:
        """No instance NIC to filter: no table. Failing that is logged, not raised:
        nothing is left to protect (and a node of user-mode NICs may run without nft)."""
        if self._removed:
            return
        commands = nftables.remove_table("bridge", self.table)
        commands += nftables.remove_table("inet", self.table)
        try:
            nftables.apply(commands)
        except HostCommandFailed as e:
            logger.warning("could not remove the node's firewall tables: %s", e.message)
        self._removed = True

    def _save(self, groups: dict[str, SecurityGroup]) -> None:
        part = self.path.with_suffix(".part")
        part.write_text(json.dumps({g: v.to_api() for g, v in groups.items()}))
        os.replace(part, self.path)
        self.groups = groups
