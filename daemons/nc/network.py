"""startNetwork, the host side of an instance network: one Linux bridge per VLAN.

Instances' private NICs attach to their VLAN's bridge. Joining that bridge to the
overlay (the VDE switch port or VXLAN device tagged with the VLAN) belongs to the
networking work that builds on this; the operation and its answer already have their
final form.
"""

from __future__ import annotations

import threading
from pathlib import Path

from mallee.common import host
from mallee.common.errors import HostCommandFailed, NetworkNotFound, NetworkSetupFailed

# ip answers at once; one that does not is stuck on the kernel's network lock.
IP_TIMEOUT_S = 10.0


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
        with self._lock:
            if not self.is_started(vlan):
                _ip(vlan, "link", "add", bridge, "type", "bridge")
            _ip(vlan, "link", "set", bridge, "up")
        return {"vlan": vlan, "bridge": bridge}

    def stop(self, vlan: int) -> None:
        with self._lock:
            if not self.is_started(vlan):
                raise NetworkNotFound(f"no network for VLAN {vlan} on this node")
            _ip(vlan, "link", "del", self.bridge(vlan))

    def started(self) -> list[dict[str, object]]:
        return [
            {"vlan": int(p.name[len(self.prefix) :]), "bridge": p.name}
            for p in sorted(Path("/sys/class/net").glob(f"{self.prefix}*"))
            if p.name[len(self.prefix) :].isdigit() and (p / "bridge").is_dir()
        ]


def _ip(vlan: int, *args: str) -> None:
    """``ip ARGS`` for VLAN ``vlan``'s network; its failure is that network's."""
    try:
        host.run("ip", *args, timeout_s=IP_TIMEOUT_S)
    except HostCommandFailed as e:
        raise NetworkSetupFailed(f"VLAN {vlan}: {e.message}") from e
