"""The NC's instance record and its states: plain data, no HTTP, no libvirt."""

from __future__ import annotations

import enum
import ipaddress
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mallee.common.capacity import VmType
from mallee.common.errors import InvalidParameter


class NcState(enum.StrEnum):
    """The NC's own states; finer than EC2's."""

    STAGING = "staging"  # admitted: images being fetched, disks made, domain defined
    RUNNING = "running"
    TEARDOWN = "teardown"  # domain being destroyed, disks removed
    TERMINATED = "terminated"


# The one mapping from NC states to EC2's (name, code).
EC2_STATE: dict[NcState, tuple[str, int]] = {
    NcState.STAGING: ("pending", 0),
    NcState.RUNNING: ("running", 16),
    NcState.TEARDOWN: ("shutting-down", 32),
    NcState.TERMINATED: ("terminated", 48),
}

LIVE_STATES = frozenset({NcState.STAGING, NcState.RUNNING, NcState.TEARDOWN})


@dataclass(frozen=True)
class ImageRef:
    id: str
    url: str
    digest: str  # "sha256:<hex>"
    format: str = "raw"

    @property
    def sha256(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class NetConfig:
    """Where the instance's NICs go: public onto the node's public bridge, private onto
    the VLAN's bridge made by startNetwork. Either may be absent. A NIC may send only from
    its MAC and, where given, its address. ``security_groups``: the groups whose rules
    let packets reach and leave the instance (none: nothing but DHCP and the metadata
    service); absent (None): the caller enforces no groups, only the anti-spoofing holds.
    """

    public_mac: str | None = None
    private_mac: str | None = None
    vlan: int | None = None
    public_ip: str | None = None
    private_ip: str | None = None
    security_groups: tuple[str, ...] | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> NetConfig:
        groups = data.get("security_groups")
        return cls(**{**data, "security_groups": None if groups is None else tuple(groups)})


@dataclass(frozen=True)
class Rule:
    """One allowed flow: ``protocol`` is tcp, udp, icmp or all; ports are a range (for
    icmp: type and code, -1 for any); the peer is ``cidr`` or the members of
    ``group_id``."""

    protocol: str
    from_port: int = -1
    to_port: int = -1
    cidr: str = ""
    group_id: str = ""


@dataclass(frozen=True)
class SecurityGroup:
    """A group as the node applies it: its rules, and the addresses of its members
    across the cloud (for the rules of other groups that name it)."""

    group_id: str
    members: tuple[str, ...] = ()
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @classmethod
    def from_api(cls, group_id: str, data: dict[str, Any]) -> SecurityGroup:
        """The group as given; InvalidParameter naming a rule that means nothing."""
        return cls(
            group_id=group_id,
            members=tuple(data.get("members", ())),
            ingress=tuple(_checked(Rule(**r), "ingress") for r in data.get("ingress", ())),
            egress=tuple(_checked(Rule(**r), "egress") for r in data.get("egress", ())),
        )

    def to_api(self) -> dict[str, Any]:
        def rules(of: tuple[Rule, ...]) -> list[dict[str, Any]]:
            return [{k: v for k, v in asdict(r).items() if v != ""} for r in of]

        return {
            "group_id": self.group_id,
            "members": list(self.members),
            "ingress": rules(self.ingress),
            "egress": rules(self.egress),
        }


def _checked(rule: Rule, direction: str) -> Rule:
    """``rule`` with its CIDR written as a network, if it can be enforced as EC2 means it."""
    where = f"{direction} rule {rule}"
    if bool(rule.cidr) == bool(rule.group_id):
        raise InvalidParameter(f"{where}: give either a cidr or a group_id")
    ports = rule.protocol in ("tcp", "udp")
    if ports and not 0 <= rule.from_port <= rule.to_port <= 65535:
        raise InvalidParameter(f"{where}: ports are a range within 0-65535")
    icmp = rule.protocol == "icmp"
    if icmp and not (-1 <= rule.from_port <= 255 and -1 <= rule.to_port <= 255):
        raise InvalidParameter(f"{where}: an ICMP type and code are -1 to 255")
    if not rule.cidr:
        return rule
    try:
        network = ipaddress.IPv4Network(rule.cidr, strict=False)
    except ValueError as e:
        raise InvalidParameter(f"{where}: {e}") from None
    return replace(rule, cidr=str(network))


@dataclass(frozen=True)
class Failure:
    """Why a launch failed: the error the NC would have answered. ``status`` below 500
    is the request's fault (it would fail on any node), 500 and up this node's."""

    code: str
    message: str
    status: int


@dataclass(frozen=True)
class Instance:
    instance_id: str
    reservation_id: str
    owner_id: str
    vm_type: VmType
    image: ImageRef
    kernel: ImageRef | None = None
    ramdisk: ImageRef | None = None
    kernel_cmdline: str | None = None
    net: NetConfig = field(default_factory=NetConfig)
    state: NcState = NcState.STAGING
    state_reason: str = ""
    failure: Failure | None = None
    launch_time: float = field(default_factory=time.time)
    terminated_at: float | None = None

    @property
    def images(self) -> tuple[ImageRef, ...]:
        return tuple(i for i in (self.image, self.kernel, self.ramdisk) if i is not None)

    def with_state(
        self, state: NcState, reason: str = "", failure: Failure | None = None
    ) -> Instance:
        terminated_at = time.time() if state is NcState.TERMINATED else self.terminated_at
        return replace(
            self,
            state=state,
            state_reason=reason,
            failure=failure or self.failure,
            terminated_at=terminated_at,
        )

    def to_record(self) -> dict[str, Any]:
        """What is kept on disk to recover the instance after an NC restart."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Instance:
        def image(value: dict[str, Any] | None) -> ImageRef | None:
            return ImageRef(**value) if value else None

        root = image(data["image"])
        assert root is not None
        return cls(
            **{
                **data,
                "vm_type": VmType(**data["vm_type"]),
                "image": root,
                "kernel": image(data.get("kernel")),
                "ramdisk": image(data.get("ramdisk")),
                "net": NetConfig.from_api(data.get("net") or {}),
                "state": NcState(data["state"]),
                "failure": Failure(**data["failure"]) if data.get("failure") else None,
            }
        )

    def to_api(self) -> dict[str, Any]:
        """The describeInstances view, with both the EC2 state and the NC's own."""
        name, code = EC2_STATE[self.state]
        return {
            "instance_id": self.instance_id,
            "reservation_id": self.reservation_id,
            "owner_id": self.owner_id,
            "vm_type": asdict(self.vm_type),
            "image_id": self.image.id,
            "kernel_id": self.kernel.id if self.kernel else None,
            "ramdisk_id": self.ramdisk.id if self.ramdisk else None,
            "net": asdict(self.net),
            "state": {"name": name, "code": code},
            "nc_state": self.state.value,
            "state_reason": self.state_reason,
            "failure": asdict(self.failure) if self.failure else None,
            "launch_time": self.launch_time,
        }
