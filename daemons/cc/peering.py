"""The private overlay between clusters (seed §2.2 and its Figure 2): clusters whose
workers sit on private networks of their own, even networks that use the same
addresses, join one overlay through their head nodes.

Each CC joins every VLAN it carries to the other clusters' CCs (``[cc] overlay_peers``)
over the network the head nodes share, from its own address there
(``overlay_peer_address``): a second VXLAN device on the VLAN's bridge (``mlcy<vlan>``,
VNI 2**20 + VLAN, as the cluster's own overlay has VNI = VLAN on the same UDP port)
flooding to every peer. A peer that does not carry the VLAN has no device of that VNI
and drops its frames. A bridge never sends a frame back out of the port it came in on,
so a full mesh of CCs does not loop.

Every CC is its VLANs' router (the slice's first address) and DHCP server for its own
cluster's instances; the two must not meet across clusters, as neutron's distributed
routers keep theirs apart. An nftables bridge table of the CC's own drops, on the peer
devices and both ways, ARP sent from a router address (the first host address of any
slice) and DHCP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from pathlib import Path

import netaddr

from mallee.common import nftables
from mallee.common.nftables import field, match, meta
from mallee.common.overlay import VxlanOverlay, local_address_problem

PREFIX = "mlcy"
VNI_BASE = 1 << 20  # above every VLAN (≤ 4094) of the clusters' own overlays
FAMILY = "bridge"


def peering_problem(address: str, peers: Collection[str]) -> str:
    """Why ``[cc] overlay_peer_address`` and ``overlay_peers`` cannot work on this host
    ("" if they can)."""
    if not peers:
        return ""
    for peer in peers:
        try:
            ipaddress.IPv4Address(peer)
        except ValueError:
            return f"[cc] overlay_peers: {peer!r} is not an IPv4 address (another CC's)"
    if not address:
        return (
            "[cc] overlay_peers needs overlay_peer_address, this CC's address on the network"
            " the head nodes share"
        )
    if address in peers:
        return f"[cc] overlay_peers: {address} is this CC's own overlay_peer_address"
    return local_address_problem("cc", "overlay_peer_address", address)


class ClusterPeering:
    def __init__(self, local: str, peers: Collection[str], subnet: str, slice_prefix: int):
        self.overlay = VxlanOverlay(local, prefix=PREFIX, vni_base=VNI_BASE)
        self.peers = sorted(peers)
        self.subnet = netaddr.IPNetwork(subnet)
        self.slice_prefix = slice_prefix
        self.guard = nftables.HeldTable(
            FAMILY, nftables.table_name("cc_peering", local), self._contents
        )

    def join(self, vlan: int, bridge: str) -> None:
        self.overlay.join(vlan, bridge, self.peers)

    def leave(self, vlan: int) -> None:
        self.overlay.leave(vlan)

    def joined(self) -> bool:
        """Whether a VLAN of this host still reaches the peers (its guard must stay)."""
        return any(
            link.name[len(PREFIX) :].isdigit() for link in Path("/sys/class/net").glob(f"{PREFIX}*")
        )

    def _contents(self) -> list[nftables.Command]:
        host_bits = str(netaddr.IPAddress((1 << (32 - self.slice_prefix)) - 1))
        sender = field("arp", "saddr ip")
        commands: list[nftables.Command] = []
        for chain, hook, side in (
            ("from_peers", "prerouting", "iifname"),
            ("to_peers", "postrouting", "oifname"),
        ):
            commands.append(
                {
                    "add": {
                        "chain": {
                            "family": FAMILY,
                            "table": self.guard.name,
                            "name": chain,
                            "type": "filter",
                            "hook": hook,
                            "prio": 0,
                            "policy": "accept",
                        }
                    }
                }
            )
            peer_device = match(meta(side), f"{PREFIX}*")
            for expr in (
                [  # a router's ARP: sent from the first host address of a slice
                    match(sender, {"prefix": _prefix(self.subnet)}),
                    match({"&": [sender, host_bits]}, "0.0.0.1"),
                ],
                [match(field("udp", "dport"), {"set": [67, 68]})],  # DHCP
            ):
                rule = {"family": FAMILY, "table": self.guard.name, "chain": chain}
                commands.append(
                    {"add": {"rule": {**rule, "expr": [peer_device, *expr, {"drop": None}]}}}
                )
        return commands


def _prefix(network: netaddr.IPNetwork) -> dict[str, object]:
    return {"addr": str(network.network), "len": network.prefixlen}
