"""The CC's view of its nodes and of the instances being placed: plain data."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from mallee.common.capacity import Capacity, VmType


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # registered, not polled yet
    UP = "up"  # the last poll was answered
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
    """What the last polls said about a node. Guarded by the CC's lock."""

    node: Node
    health: Health = Health.UNKNOWN
    last_seen: float | None = None
    last_error: str = ""
    most: Capacity | None = None
    available: Capacity | None = None
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    poll_started: float = 0.0  # when the poll last applied (answered or failed) began

    def to_api(self) -> dict[str, Any]:
        def capacity(c: Capacity | None) -> dict[str, int] | None:
            return (
                None
                if c is None
                else {"cores": c.cores, "memory_mb": c.memory_mb, "disk_gb": c.disk_gb}
            )

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


@dataclass
class Reservation:
    """Resources held on a node for an instance the node has not reported yet.

    It ends when a poll of the node lists the instance (the node's own figures now count
    it), when its dispatch fails, or when a poll begun after a successful dispatch does
    not list it (the instance is gone)."""

    instance_id: str
    node: str
    vm_type: VmType
    view: dict[str, Any] | None = None  # the NC's answer to runInstance
    dispatched_at: float | None = None
