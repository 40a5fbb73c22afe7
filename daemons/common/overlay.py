"""The private overlay's host side: how a VLAN's bridge on this host reaches the same
VLAN's bridges on the other hosts (seed §2.2). Two backends, one per deployment
(``overlay``): VXLAN, here, and VDE (``vde.py``).

**VXLAN**, the kernel's: a device per VLAN (VNI = VLAN) on this host's underlay
address, a port of the VLAN's bridge, with a flood entry per peer host (no multicast
needed). Different VNIs never reach each other. Its MTU is the underlay's less 50.

Links are made through netlink (pyroute2).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute, NetlinkError

from mallee.common import host
from mallee.common.errors import HostCommandFailed, NetworkSetupFailed

VXLAN_PORT = 4789  # IANA's
VXLAN_OVERHEAD = 50  # outer Ethernet, IPv4, UDP and VXLAN headers
FLOOD = "00:00:00:00:00:00"  # the forwarding entry unknown and broadcast frames follow


VDE_PROGRAMS = ("vde_switch", "vde_plug", "dpipe", "socat")


class Overlay(Protocol):
    """What a VLAN's bridge needs of a backend (VxlanOverlay, vde.VdeOverlay)."""

    local: str  # this host's address on the underlay
    mtu: int  # what the instances' NICs may send

    def join(self, vlan: int, bridge: str, peers: Collection[str]) -> None: ...

    def leave(self, vlan: int) -> None: ...

    def ensure(self, bridges: dict[int, str]) -> None: ...

    def stop(self) -> None: ...


def overlay_problem(section: str, overlay: str, address: str) -> str:
    """Why a daemon's overlay keys (``section``: its config section) cannot work on this
    host ("" if they can)."""
    if overlay == "":
        return ""
    if overlay not in ("vxlan", "vde"):
        return (
            f'[{section}] overlay: {overlay!r} is not one of "vxlan" (hosts that reach each'
            ' other over UDP), "vde" (the seed\'s switches and wires: one TCP connection'
            ' from the CC to each node) or "" (none)'
        )
    if not address:
        return (
            f"[{section}] overlay = {overlay} needs overlay_address, this host's address on"
            " the underlay"
        )
    if overlay == "vxlan" and not Path("/sys/module/vxlan").exists():
        with contextlib.suppress(HostCommandFailed):
            host.run("modprobe", "vxlan")
        if not Path("/sys/module/vxlan").exists():
            return (
                f'[{section}] overlay = "vxlan": this kernel has no VXLAN (module vxlan);'
                ' use overlay = "vde", which needs no kernel support'
            )
    missing = [p for p in VDE_PROGRAMS if overlay == "vde" and shutil.which(p) is None]
    if missing:
        return (
            f'[{section}] overlay = "vde" needs {", ".join(missing)} (Debian: apt-get install'
            ' vde2 socat); or use overlay = "vxlan" where hosts reach each other over UDP'
        )
    return local_address_problem(section, "overlay_address", address)


def local_address_problem(section: str, key: str, address: str) -> str:
    """Why ``[section] key`` = ``address`` is not an address of this host ("" if it is)."""
    with IPRoute() as ipr:
        local = {m.get("IFA_ADDRESS") for m in ipr.get_addr(family=socket.AF_INET)}
    if address not in local:
        return (
            f"[{section}] {key}: {address} is not an address of this host (it has"
            f" {', '.join(sorted(local))})"
        )
    return ""


class VxlanOverlay:
    """``prefix`` names the devices: a CC and an NC sharing a host each keep their own.
    VLAN N's VNI is ``vni_base`` + N: the kernel lets one host have one device per VNI
    and port, so a second overlay of the same VLANs (between clusters) needs VNIs of its
    own."""

    def __init__(
        self,
        local: str,
        underlay_mtu: int = 1500,
        port: int = VXLAN_PORT,
        prefix: str = "mlvx",
        vni_base: int = 0,
    ) -> None:
        self.local = local
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self.port = port
        self.prefix = prefix
        self.vni_base = vni_base

    def device(self, vlan: int) -> str:
        return f"{self.prefix}{vlan}"

    def join(self, vlan: int, bridge: str, peers: Collection[str]) -> None:
        """Make VLAN ``vlan``'s device a port of ``bridge`` (idempotent) flooding to
        exactly ``peers``: entries of hosts no longer in the VLAN go."""
        device = self.device(vlan)
        try:
            with IPRoute() as ipr:
                if not ipr.link_lookup(ifname=device):
                    ipr.link(
                        "add",
                        ifname=device,
                        kind="vxlan",
                        vxlan_id=self.vni_base + vlan,
                        vxlan_local=self.local,
                        vxlan_port=self.port,
                        vxlan_learning=1,
                        mtu=self.mtu,
                    )
                [index] = ipr.link_lookup(ifname=device)
                [master] = ipr.link_lookup(ifname=bridge)
                ipr.link("set", index=index, master=master, state="up")
                flooded = {
                    entry.get("NDA_DST")
                    for entry in ipr.fdb("dump", ifindex=index)
                    if entry.get("ifindex") == index and entry.get("NDA_LLADDR") == FLOOD
                }
                for peer in sorted(set(peers) - flooded):
                    ipr.fdb("append", ifindex=index, lladdr=FLOOD, dst=peer)
                for peer in sorted(flooded - set(peers)):
                    ipr.fdb("del", ifindex=index, lladdr=FLOOD, dst=peer)
        except (NetlinkError, ValueError) as e:
            raise NetworkSetupFailed(f"VLAN {vlan}: VXLAN device {device}: {e}") from e

    def leave(self, vlan: int) -> None:
        with IPRoute() as ipr, contextlib.suppress(NetlinkError, ValueError):
            [index] = ipr.link_lookup(ifname=self.device(vlan))
            ipr.link("del", index=index)

    def ensure(self, bridges: dict[int, str]) -> None:
        """Nothing to start again: the kernel keeps VXLAN devices whatever happens to
        their owner."""

    def stop(self) -> None:
        """Nothing to stop: the devices stay for the instances that run on."""
