"""The typed client of the NC's internal API: one method per operation of the seed,
answers as plain data. The CC calls its NCs only through this."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from mallee.common.capacity import Capacity, VmType
from mallee.common.rpc import RpcClient
from mallee.nc.model import EC2_STATE, Failure, NcState, SecurityGroup


@dataclass(frozen=True)
class NcInstance:
    """An instance as its NC describes it."""

    instance_id: str
    reservation_id: str
    owner_id: str
    vm_type: VmType
    image_id: str
    kernel_id: str | None
    ramdisk_id: str | None
    net: dict[str, Any]
    nc_state: NcState
    state_reason: str
    failure: Failure | None
    launch_time: float

    @property
    def state(self) -> dict[str, Any]:
        """EC2's state name and code."""
        name, code = EC2_STATE[self.nc_state]
        return {"name": name, "code": code}

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> NcInstance:
        failure = data.get("failure")
        return cls(
            instance_id=data["instance_id"],
            reservation_id=data["reservation_id"],
            owner_id=data["owner_id"],
            vm_type=VmType(**data["vm_type"]),
            image_id=data["image_id"],
            kernel_id=data.get("kernel_id"),
            ramdisk_id=data.get("ramdisk_id"),
            net=data.get("net") or {},
            nc_state=NcState(data["nc_state"]),
            state_reason=data.get("state_reason", ""),
            failure=Failure(**failure) if failure else None,
            launch_time=data["launch_time"],
        )

    def to_api(self) -> dict[str, Any]:
        """The NC's own spelling, as ``from_api`` reads it (the CC keeps reports so)."""
        return {
            **asdict(self),
            "nc_state": self.nc_state.value,
            "state": self.state,
            "failure": asdict(self.failure) if self.failure else None,
        }


@dataclass(frozen=True)
class NcResource:
    """describeResource: what the node offers, and whether its libvirt answers."""

    maximum: Capacity
    available: Capacity
    instances: int
    hypervisor_reachable: bool
    hypervisor_error: str
    overlay_address: str  # the host's underlay address for the private overlay; "": none

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> NcResource:
        def capacity(which: str) -> Capacity:
            return Capacity(
                data[f"cores_{which}"], data[f"memory_mb_{which}"], data[f"disk_gb_{which}"]
            )

        return cls(
            maximum=capacity("max"),
            available=capacity("available"),
            instances=data["instances"],
            hypervisor_reachable=data["hypervisor_reachable"],
            hypervisor_error=data["hypervisor_error"],
            overlay_address=data["overlay_address"],
        )


class NcClient:
    """One NC, through an RpcClient whose timeouts and retries suit the calls made."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    def run_instance(self, request: dict[str, Any]) -> NcInstance:
        """Admit and queue a launch; the answer is the instance, pending."""
        return NcInstance.from_api(self.rpc.call("POST", "/v1/instances", request))

    def describe_instances(self, instance_ids: list[str] | None = None) -> list[NcInstance]:
        params = {"instance_id": instance_ids} if instance_ids else None
        answer = self.rpc.call("GET", "/v1/instances", params=params)
        return [NcInstance.from_api(i) for i in answer["instances"]]

    def terminate_instance(self, instance_id: str) -> NcInstance:
        return NcInstance.from_api(self.rpc.call("DELETE", f"/v1/instances/{instance_id}"))

    def reboot_instance(self, instance_id: str) -> NcInstance:
        return NcInstance.from_api(self.rpc.call("POST", f"/v1/instances/{instance_id}/reboot"))

    def get_console_output(self, instance_id: str) -> str:
        answer = self.rpc.call("GET", f"/v1/instances/{instance_id}/console")
        return str(answer["output"])

    def describe_resource(self) -> NcResource:
        return NcResource.from_api(self.rpc.call("GET", "/v1/resource"))

    def start_network(self, vlan: int, peers: Collection[str] = ()) -> dict[str, Any]:
        body = {"vlan": vlan, "peers": sorted(peers)}
        answer: dict[str, Any] = self.rpc.call("POST", "/v1/networks", body)
        return answer

    def stop_network(self, vlan: int) -> None:
        self.rpc.call("DELETE", f"/v1/networks/{vlan}")

    def put_security_group(self, group: SecurityGroup) -> None:
        self.rpc.call("PUT", f"/v1/security-groups/{group.group_id}", group.to_api())

    def delete_security_group(self, group_id: str) -> None:
        self.rpc.call("DELETE", f"/v1/security-groups/{group_id}")

    def describe_security_groups(self) -> list[SecurityGroup]:
        answer = self.rpc.call("GET", "/v1/security-groups")
        return [SecurityGroup.from_api(g["group_id"], g) for g in answer["security_groups"]]
