"""The private overlay's control plane (seed §2.2): which of the cluster's nodes carry
each VLAN, and the peers each is told to flood to.

A node carries a VLAN while an instance with a private NIC on it is reserved there or
reported live there. Each such node is told (startNetwork) to flood to every other node
carrying the VLAN, by their underlay addresses (each node reports its own in its poll);
one that no longer carries a VLAN is told to stop it. What each node was last told is
remembered, so a cycle calls only the nodes whose peers changed; a node whose poll
failed is told again in full (it may have restarted).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable

from mallee.common.errors import MalleeError
from mallee.common.rpc import RemoteError
from mallee.nc.client import NcClient

logger = logging.getLogger(__name__)

# node → VLAN → the underlay addresses of the VLAN's other nodes
Plan = dict[str, dict[int, frozenset[str]]]
THIS_CC = ""  # the CC itself among the carriers (no node is named "")


def plan(placements: Iterable[tuple[str, int]], addresses: dict[str, str]) -> Plan:
    """What every node is to carry, from (node, VLAN) placements of live instances and
    the nodes' underlay addresses ("" for a node without overlay: it floods nowhere)."""
    carriers: dict[int, set[str]] = defaultdict(set)
    for node, vlan in placements:
        carriers[vlan].add(node)
    wanted: Plan = defaultdict(dict)
    for vlan, nodes in carriers.items():
        for node in nodes:
            others = {addresses.get(n, "") for n in nodes if n != node}
            wanted[node][vlan] = frozenset(others - {"", addresses.get(node, "")})
    return dict(wanted)


class OverlayControl:
    def __init__(self, client: Callable[[str], NcClient]) -> None:
        self._client = client
        self._lock = threading.Lock()  # one change at a time: no node told an older plan
        self._given: Plan = {}

    def forget(self, node: str) -> None:
        """Tell ``node`` everything again next time (it may have lost it)."""
        with self._lock:
            self._given.pop(node, None)

    def apply(self, wanted: Plan, up: Collection[str]) -> dict[str, MalleeError]:
        """Tell every node that answers its polls (``up``) what changed for it; the
        errors of those that failed, by node (each is told again at the next apply).
        A node not up is not waited for: its failed poll made this forget it, so it is
        told everything once it answers again."""
        failed: dict[str, MalleeError] = {}
        with self._lock:
            for node in sorted((set(wanted) | set(self._given)) & set(up)):
                try:
                    self._tell(node, wanted.get(node, {}))
                except MalleeError as e:
                    logger.warning("node %s: private networks not set up: %s", node, e.message)
                    self._given.pop(node, None)
                    failed[node] = e
        return failed

    def _tell(self, node: str, wanted: dict[int, frozenset[str]]) -> None:
        given = self._given.setdefault(node, {})
        client = self._client(node)
        for vlan, peers in sorted(wanted.items()):
            if given.get(vlan) != peers:
                client.start_network(vlan, peers)
                given[vlan] = peers
        for vlan in sorted(set(given) - set(wanted)):
            try:
                client.stop_network(vlan)
            except RemoteError as e:
                if e.status == 409:  # an instance still on it: the next cycle asks again
                    continue
                if e.status != 404:  # 404: stopped already
                    raise
            del given[vlan]
        if not given:
            del self._given[node]
