"""startNetwork, the host side of an instance network: one Linux bridge per VLAN.

Instances' private NICs attach to their VLAN's bridge. Joining that bridge to the
overlay (the VDE switch port or VXLAN device tagged with the VLAN) belongs to the
networking work that builds on this; the operation and its answer already have their
final form. Links are made through netlink (pyroute2), not by running ``ip``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from mallee.common.errors import NetworkNotFound, NetworkSetupFailed


class Networks:
    def __init__(self, bridge_prefix: str) -> None:
        if len(bridge_prefix) > 11:
            raise ValueError(f"private_bridge_prefix {bridge_prefix!r}: at most 11 characters")
        self.prefix = bridge_prefix
        self._lock = threading.Lock()

    def bridge(self, vlan: int) -> str:
        return f"{self.prefix}{vlan}"

    def is_started(self, vlan: int) -> bool:
        return Path("/sys/class/net", self.bridge(vlan), "bridge").is_dir()

    def start(self, vlan: int) -> dict[str, object]:
        """Make the VLAN's bridge (idempotent) and bring it up."""
        bridge = self.bridge(vlan)
        with self._lock, _netlink(vlan) as ipr:
            if not self.is_started(vlan):
                ipr.link("add", ifname=bridge, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=bridge)[0], state="up")
        return {"vlan": vlan, "bridge": bridge}

    def stop(self, vlan: int) -> None:
        with self._lock:
            if not self.is_started(vlan):
                raise NetworkNotFound(f"no network for VLAN {vlan} on this node")
            with _netlink(vlan) as ipr:
                ipr.link("del", index=ipr.link_lookup(ifname=self.bridge(vlan))[0])

    def started(self) -> list[dict[str, object]]:
        return [
            {"vlan": int(p.name[len(self.prefix) :]), "bridge": p.name}
            for p in sorted(Path("/sys/class/net").glob(f"{self.prefix}*"))
            if p.name[len(self.prefix) :].isdigit() and (p / "bridge").is_dir()
        ]


@contextmanager
def _netlink(vlan: int) -> Iterator[IPRoute]:
    """A netlink socket for one change of VLAN ``vlan``'s network; the kernel's refusal
    is that network's failure."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as e:
        raise NetworkSetupFailed(f"VLAN {vlan}: {e}") from e
