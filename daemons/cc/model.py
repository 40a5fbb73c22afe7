"""The CC's view of its nodes and of the instances being placed: plain data."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from mallee.common.capacity import Capacity, VmType
from mallee.nc.client import NcInstance


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # registered, not polled yet
    UP = "up"  # the last poll was answered
    DEGRADED = "degraded"  # the NC answers, but its libvirt does not: it can run nothing
    UNREACHABLE = "unreachable"  # the last poll failed, for less than down_after_s
    DOWN = "down"  # no answer for down_after_s or more


@dataclass(frozen=True)
class Node:
    """A registered NC; ``position`` is the registration order."""

    name: str
    url: str
    position: int
    registered_at: float


@dataclass
class NodeState:
    """What the last polls said about a node. Guarded by the CC's lock. Times used for
    ordering and for ``down_after_s`` are monotonic; ``last_seen`` is for people."""

    node: Node
    health: Health = Health.UNKNOWN
    last_seen: float | None = None  # wall clock of the last answer
    last_answer: float | None = None  # monotonic, of the same
    last_error: str = ""
    most: Capacity | None = None
    available: Capacity | None = None
    instances: dict[str, NcInstance] = field(default_factory=dict)
    poll_started: float = float("-inf")  # when the poll last applied began (monotonic)
    groups_in_step: bool = False  # holds the cluster's security groups as they are
    overlay_address: str = ""  # its underlay address for the private overlay, as it said

    def to_api(self) -> dict[str, Any]:
        def capacity(c: Capacity | None) -> dict[str, int] | None:
            return None if c is None else asdict(c)

        return {
            "name": self.node.name,
            "url": self.node.url,
            "health": self.health.value,
            "last_seen": self.last_seen,
            "last_error": self.last_error,
            "maximum": capacity(self.most),
            "available": capacity(self.available),
            "instances": len(self.instances),
        }


def instance_view(
    instance: NcInstance, node: str, reachable: bool, public_ip: str
) -> dict[str, Any]:
    """The CC's answer about an instance: what its NC said, where it is, whether that
    node answers now (else the state is the last one reported), and the public address
    the cluster gave it ("" in SYSTEM mode: the site's DHCP gives it)."""
    return {
        "instance_id": instance.instance_id,
        "reservation_id": instance.reservation_id,
        "owner_id": instance.owner_id,
        "vm_type": asdict(instance.vm_type),
        "image_id": instance.image_id,
        "kernel_id": instance.kernel_id,
        "ramdisk_id": instance.ramdisk_id,
        "net": instance.net,
        "state": instance.state,
        "state_reason": instance.state_reason,
        "failure": asdict(instance.failure) if instance.failure else None,
        "launch_time": instance.launch_time,
        "node": node,
        "reachable": reachable,
        "public_ip": public_ip,
    }


@dataclass
class Reservation:
    """Resources held on a node for an instance the node has not reported yet.

    It ends when a poll of the node lists the instance (the node's own figures now count
    it), when its dispatch fails, or when a poll begun after a successful dispatch does
    not list it (the instance is gone)."""

    instance_id: str
    node: str
    vm_type: VmType
    net: dict[str, Any] = field(default_factory=dict)  # its NICs, as sent to its node
    view: NcInstance | None = None  # the NC's last word on it while dispatching
    dispatched_at: float | None = None  # monotonic
