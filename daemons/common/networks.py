"""startNetwork, the host side of an instance network: one Linux bridge per VLAN.

Instances' private NICs attach to their VLAN's bridge; with an overlay, the bridge is
joined to it (VXLAN: the VLAN's device, flooding to the peers the CC names; VDE: a tap
on the host's switch), so it reaches the same VLAN's bridges on the other hosts. Links
are made through netlink (pyroute2), not by running ``ip``.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from mallee.common.errors import NetworkNotFound, NetworkSetupFailed
from mallee.common.overlay import Overlay


class Networks:
    def __init__(self, bridge_prefix: str, overlay: Overlay | None = None) -> None:
        if len(bridge_prefix) > 11:
            raise ValueError(f"private_bridge_prefix {bridge_prefix!r}: at most 11 characters")
        self.prefix = bridge_prefix
        self.overlay = overlay
        self._lock = threading.Lock()
        self._peers: dict[int, list[str]] = {}  # per VLAN, as the last start gave them

    def bridge(self, vlan: int) -> str:
        return f"{self.prefix}{vlan}"

    def is_started(self, vlan: int) -> bool:
        return Path("/sys/class/net", self.bridge(vlan), "bridge").is_dir()

    def start(self, vlan: int, peers: Collection[str] = ()) -> dict[str, object]:
        """Make the VLAN's bridge (idempotent) and bring it up; with an overlay, join it
        flooding to exactly ``peers`` (the other hosts of the VLAN; this host's own
        address among them is left out). A start with other peers replaces them."""
        bridge = self.bridge(vlan)
        with self._lock:
            with _netlink(vlan) as ipr:
                if not self.is_started(vlan):
                    ipr.link("add", ifname=bridge, kind="bridge")
                ipr.link("set", index=ipr.link_lookup(ifname=bridge)[0], state="up")
            if self.overlay is not None:
                others = sorted(set(peers) - {self.overlay.local})
                self.overlay.join(vlan, bridge, others)
                self._peers[vlan] = others
        return self._described(vlan)

    def stop(self, vlan: int) -> None:
        with self._lock:
            if not self.is_started(vlan):
                raise NetworkNotFound(f"no network for VLAN {vlan} on this node")
            if self.overlay is not None:
                self.overlay.leave(vlan)
                self._peers.pop(vlan, None)
            with _netlink(vlan) as ipr:
                ipr.link("del", index=ipr.link_lookup(ifname=self.bridge(vlan))[0])

    def _described(self, vlan: int) -> dict[str, object]:
        return {"vlan": vlan, "bridge": self.bridge(vlan), "peers": self._peers.get(vlan, [])}

    def vlans(self) -> list[int]:
        """The VLANs whose bridges (of this prefix) are on this host."""
        return sorted(
            int(p.name[len(self.prefix) :])
            for p in Path("/sys/class/net").glob(f"{self.prefix}*")
            if p.name[len(self.prefix) :].isdigit() and (p / "bridge").is_dir()
        )

    def ensure(self) -> None:
        """The overlay's processes started again where they died (VDE's), every VLAN
        bridge here joined: after a restart, those of the instances that ran on."""
        if self.overlay is not None:
            with self._lock:
                self.overlay.ensure({vlan: self.bridge(vlan) for vlan in self.vlans()})

    def started(self) -> list[dict[str, object]]:
        return [self._described(vlan) for vlan in self.vlans()]


@contextmanager
def _netlink(vlan: int) -> Iterator[IPRoute]:
    """A netlink socket for one change of VLAN ``vlan``'s network; the kernel's refusal
    is that network's failure."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as e:
        raise NetworkSetupFailed(f"VLAN {vlan}: {e}") from e
