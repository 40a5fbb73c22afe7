"""The CC's side of the private overlay: it joins every VLAN its nodes carry, as the
VLAN's router and DHCP server (seed §2.2: a slice of the private subnet per VLAN, DHCP
on each).

Per VLAN the CC has a bridge (``mlcc<vlan>``) joined to the overlay like a node's
(VXLAN ``mlcx<vlan>``, flooding to the nodes carrying the VLAN; VDE: a tap ``mlcd<vlan>``
on the CC's switch, whose wires to those nodes carry the VLAN), the slice's router
address on it (its first host address), and a dnsmasq serving exactly the private
(MAC, address) pairs of the VLAN's instances, with the overlay's MTU in its answers
(VXLAN: the underlay's less 50 bytes), so that instances never send frames the overlay
would have to fragment, and a route to the metadata service through the router (no
default route: the public NIC has that). With peers in other clusters (peering.py),
each VLAN's bridge is joined to theirs too. A VLAN no node carries any more is taken
down whole. An orderly CC stop ends the dnsmasqs (and VDE's switch); the bridges stay
for the instances that run on.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

import netaddr
from pyroute2 import IPRoute

from mallee.cc.addresses import AddressPair
from mallee.cc.dhcp import DhcpServer, end_stale
from mallee.cc.peering import ClusterPeering
from mallee.cc.router import METADATA_IP
from mallee.common import nftables, slices
from mallee.common.networks import Networks
from mallee.common.nftables import field, match, meta
from mallee.common.overlay import Overlay

logger = logging.getLogger(__name__)

BRIDGE_PREFIX = "mlcc"
VXLAN_PREFIX = "mlcx"
VDE_PREFIX = "mlcd"  # the taps joining the CC's bridges to its VDE switch


def host_overlap(subnet: str) -> str:
    """An address of this host, not on a bridge of the CC's own, whose network overlaps
    ``subnet`` (as "ADDRESS/PREFIX on INTERFACE"); "" if none. Routing a VLAN's slice
    there would take the host's own network away from it."""
    wanted = netaddr.IPNetwork(subnet)
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for entry in ipr.get_addr(family=socket.AF_INET):
            name = names.get(entry["index"], "?")
            if name.startswith(BRIDGE_PREFIX) and name[len(BRIDGE_PREFIX) :].isdigit():
                continue
            held = netaddr.IPNetwork(f"{entry.get_attr('IFA_ADDRESS')}/{entry['prefixlen']}")
            if held.first <= wanted.last and wanted.first <= held.last:
                return f"{held} on {name}"
    return ""


class PrivateNetworks:
    def __init__(
        self,
        directory: Path,
        overlay: Overlay,
        subnet: str,
        slice_prefix: int,
        peering: ClusterPeering | None = None,
        metadata: tuple[str, int] | None = None,
    ) -> None:
        self.directory = directory
        self.peering = peering
        self.metadata = metadata
        # the redirect of 169.254.169.254 on the VLAN bridges, while there is one
        self.redirect = nftables.HeldTable(
            "ip", nftables.table_name("cc_vlans", overlay.local), self._redirect
        )
        self.overlay = overlay
        self.networks = Networks(BRIDGE_PREFIX, self.overlay)
        self.subnet = subnet
        self.slice_prefix = slice_prefix
        self._dhcp: dict[int, DhcpServer] = {}
        # per VLAN, the peers and pairs it was last carried with: an unchanged VLAN whose
        # bridge is still there costs an apply nothing (it runs at every poll)
        self._carried: dict[int, tuple[frozenset[str], frozenset[AddressPair]]] = {}
        self._lock = threading.Lock()  # one apply at a time

    def apply(self, wanted: dict[int, tuple[Collection[str], Collection[AddressPair]]]) -> None:
        """Carry exactly the VLANs of ``wanted`` (VLAN → its nodes' underlay addresses,
        its instances' pairs); VLANs started before and no longer wanted, by this CC or
        by one before it, are taken down."""
        with self._lock:
            if self.peering is not None and wanted:
                self.peering.guard.hold(True)  # before any VLAN reaches a peer
            # (a table an earlier CC left with another metadata_address goes too)
            self.redirect.hold(self.metadata is not None and bool(wanted))
            for vlan, (peers, pairs) in sorted(wanted.items()):
                carried = (frozenset(peers), frozenset(pairs))
                if self._carried.get(vlan) == carried and self.networks.is_started(vlan):
                    continue
                self._each(vlan, "carried", partial(self._carry, vlan, *carried))
            for vlan in sorted((set(self.networks.vlans()) | set(self._dhcp)) - set(wanted)):
                self._each(vlan, "taken down", partial(self._drop, vlan))
            if self.peering is not None and not wanted and not self.peering.joined():
                self.peering.guard.hold(False)
            for dhcp in self._dhcp.values():
                dhcp.ensure_running()
            self.networks.ensure()

    @staticmethod
    def _each(vlan: int, what: str, change: Callable[[], None]) -> None:
        """One VLAN's change; its failure is logged and tried again at the next apply,
        and holds up no other VLAN."""
        try:
            change()
        except Exception:
            logger.exception("VLAN %d not %s here; trying again at the next poll", vlan, what)

    def _carry(self, vlan: int, peers: Collection[str], pairs: Collection[AddressPair]) -> None:
        piece = slices.slice_of(self.subnet, self.slice_prefix, vlan)
        router = slices.router_of(piece)
        bridge = str(self.networks.start(vlan, peers)["bridge"])
        if self.peering is not None:
            self.peering.join(vlan, bridge)
        # The CC routes no VLAN to any other: one VLAN is one user's isolated segment
        # (a head node forwarding for other reasons must not forward these).
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("0")
        with IPRoute() as ipr:
            [index] = ipr.link_lookup(ifname=bridge)
            held = {m.get("IFA_ADDRESS") for m in ipr.get_addr(index=index, family=socket.AF_INET)}
            if router not in held:
                ipr.addr("add", index=index, address=router, prefixlen=self.slice_prefix)
        dhcp = self._dhcp.get(vlan)
        if dhcp is None:
            # no default route (the public NIC has it): only the metadata's, through here
            routes = {f"{METADATA_IP}/32": router} if self.metadata else {}
            dhcp = DhcpServer(self.directory / str(vlan), bridge, piece, "", [], self.mtu(), routes)
            dhcp.start(pairs)
            self._dhcp[vlan] = dhcp
        else:
            dhcp.serve(pairs)
        self._carried[vlan] = (frozenset(peers), frozenset(pairs))

    def _redirect(self) -> list[nftables.Command]:
        """169.254.169.254:80 from any VLAN to the CLC's metadata service or this CC's
        proxy, keeping the instance's (private, cloud-wide unique) address as the
        source; the proxy takes nothing but what the VLANs' redirect sends it."""
        assert self.metadata is not None
        address, port = self.metadata
        table = {"family": "ip", "table": self.redirect.name}

        def chain(name: str, kind: str, hook: str, prio: int) -> nftables.Command:
            return {"add": {"chain": {**table, "name": name, "type": kind, "hook": hook,
                                      "prio": prio}}}  # fmt: skip

        def rule(chain: str, *expr: nftables.Expr) -> nftables.Command:
            return {"add": {"rule": {**table, "chain": chain, "expr": list(expr)}}}

        to_target = (match(field("ip", "daddr"), address), match(field("tcp", "dport"), port))
        commands = [
            chain("prerouting", "nat", "prerouting", -100),
            rule(
                "prerouting",
                match(meta("iifname"), f"{BRIDGE_PREFIX}*"),
                match(field("ip", "daddr"), METADATA_IP),
                match(field("tcp", "dport"), 80),
                {"dnat": {"addr": address, "port": port}},
            ),
        ]
        if address == self.overlay.local:  # this CC's metadata proxy
            redirected = match({"ct": {"key": "status"}}, "dnat", "in")
            commands += [
                chain("input", "filter", "input", 0),
                rule("input", *to_target, redirected, {"accept": None}),
                rule("input", *to_target, {"drop": None}),
            ]
        return commands

    def mtu(self) -> int:
        """What instances may send: the least of this cluster's overlay and the
        peering's (a VDE cluster joined to others over VXLAN gets VXLAN's)."""
        if self.peering is None:
            return self.overlay.mtu
        return min(self.overlay.mtu, self.peering.overlay.mtu)

    def _drop(self, vlan: int) -> None:
        self._carried.pop(vlan, None)
        dhcp = self._dhcp.pop(vlan, None)
        if dhcp is not None:
            dhcp.stop()
        else:  # started by an earlier CC: end the dnsmasq it left, if any
            end_stale(self.directory / str(vlan))
        if self.peering is not None:
            self.peering.leave(vlan)
        if self.networks.is_started(vlan):
            self.networks.stop(vlan)
        shutil.rmtree(self.directory / str(vlan), ignore_errors=True)
        logger.info("VLAN %d: no node carries it any more; taken down", vlan)

    def stop(self) -> None:
        with self._lock:
            for dhcp in self._dhcp.values():
                dhcp.stop()
            self.overlay.stop()
