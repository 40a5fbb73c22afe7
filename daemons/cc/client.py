"""The typed client of the CC's internal API: one method per operation of the seed the
CLC uses, answers as plain data. The CLC calls its clusters only through this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from mallee.common.capacity import VmType
from mallee.common.rpc import RemoteError, RpcClient
from mallee.nc.model import SecurityGroup

# How long a runInstances may take: the CC answers once every instance's NC has
# fetched its images and started its domain.
RUN_TIMEOUT_S = 1800.0

Answer = TypeVar("Answer")


@dataclass(frozen=True)
class TypeRoom:
    """describeResources for one instance type: how many fit now, and on empty nodes."""

    vm_type: VmType
    available: int
    maximum: int


@dataclass(frozen=True)
class ClusterInstance:
    """An instance as the CC reports it: EC2's state, where it runs, and why it ended
    (the launch's failure, or the NC's reason) once terminated."""

    instance_id: str
    state: str
    node: str
    reachable: bool
    reason: str
    public_ip: str = ""  # the cluster's DHCP gives it (public_mode managed or static)


@dataclass(frozen=True)
class InstanceResult:
    """The CC's answer for one instance of a terminate or reboot: done, or an error."""

    instance_id: str
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """A node as its CC knows it."""

    name: str
    url: str
    health: str
    instances: int


class CcClient:
    """One CC, through an RpcClient whose timeouts and retries suit the calls made."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    def _read(self, answer: Any, read: Callable[[Any], Answer]) -> Answer:
        try:
            return read(answer)
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(
                502, "BadAnswer", f"{self.rpc.base_url}: an answer not in the CC's API ({e!r})"
            ) from None

    def describe_resources(self, vm_types: list[VmType]) -> list[TypeRoom]:
        body = {"vm_types": [asdict(vm) for vm in vm_types]}
        answer = self.rpc.call("POST", "/v1/resources/describe", body)
        by_name = {vm.name: vm for vm in vm_types}
        return self._read(
            answer,
            lambda a: [
                TypeRoom(by_name[t["name"]], int(t["available"]), int(t["max"]))
                for t in a["vm_types"]
            ],
        )

    def run_instances(self, request: dict[str, Any]) -> list[ClusterInstance]:
        """``request`` is the CC's RunInstancesRequest. Answers once all run on their
        nodes (or raises, none running)."""
        timeout = (self.rpc.timeout[0], RUN_TIMEOUT_S)
        answer = self.rpc.call("POST", "/v1/instances", request, timeout=timeout)
        return self._read(answer, lambda a: [_instance(i) for i in a["instances"]])

    def describe_instances(self) -> list[ClusterInstance]:
        """Every instance the cluster knows."""
        answer = self.rpc.call("GET", "/v1/instances")
        return self._read(answer, lambda a: [_instance(i) for i in a["instances"]])

    def terminate_instances(self, instance_ids: list[str]) -> list[InstanceResult]:
        answer = self.rpc.call("POST", "/v1/instances/terminate", {"instance_ids": instance_ids})
        return self._read(answer, _results)

    def reboot_instances(self, instance_ids: list[str]) -> list[InstanceResult]:
        answer = self.rpc.call("POST", "/v1/instances/reboot", {"instance_ids": instance_ids})
        return self._read(answer, _results)

    def console_output(self, instance_id: str) -> str:
        answer = self.rpc.call("GET", f"/v1/instances/{instance_id}/console")
        return self._read(answer, lambda a: str(a["output"]))

    def register_node(self, name: str, url: str) -> NodeInfo:
        answer = self.rpc.call("POST", "/v1/nodes", {"name": name, "url": url})
        return self._read(answer, _node)

    def deregister_node(self, name: str, force: bool = False) -> None:
        params = {"force": "true"} if force else None
        self.rpc.call("DELETE", f"/v1/nodes/{name}", params=params)

    def describe_nodes(self) -> list[NodeInfo]:
        answer = self.rpc.call("GET", "/v1/nodes")
        return self._read(answer, lambda a: [_node(n) for n in a["nodes"]])

    def put_security_group(self, group: SecurityGroup) -> None:
        self.rpc.call("PUT", f"/v1/security-groups/{group.group_id}", group.to_api())

    def delete_security_group(self, group_id: str) -> None:
        self.rpc.call("DELETE", f"/v1/security-groups/{group_id}")

    def describe_security_groups(self) -> list[SecurityGroup]:
        answer = self.rpc.call("GET", "/v1/security-groups")
        return self._read(
            answer,
            lambda a: [SecurityGroup.from_api(g["group_id"], g) for g in a["security_groups"]],
        )

    def describe_elastic_addresses(self) -> dict[str, str]:
        """Elastic address → the instance it is associated with."""
        answer = self.rpc.call("GET", "/v1/elastic-addresses")
        return self._read(
            answer, lambda a: {e["public_ip"]: e["instance_id"] for e in a["elastic_addresses"]}
        )

    def associate_address(self, public_ip: str, instance_id: str) -> None:
        self.rpc.call("PUT", f"/v1/elastic-addresses/{public_ip}", {"instance_id": instance_id})

    def disassociate_address(self, public_ip: str) -> None:
        self.rpc.call("DELETE", f"/v1/elastic-addresses/{public_ip}")


def _node(node: dict[str, Any]) -> NodeInfo:
    return NodeInfo(
        str(node["name"]), str(node["url"]), str(node["health"]), int(node["instances"])
    )


def _instance(view: dict[str, Any]) -> ClusterInstance:
    failure = view.get("failure")
    reason = f"{failure['code']}: {failure['message']}" if failure else view.get("state_reason")
    return ClusterInstance(
        str(view["instance_id"]),
        str(view["state"]["name"]),
        str(view["node"]),
        bool(view["reachable"]),
        str(reason or ""),
        str(view["public_ip"]),
    )


def _results(answer: Any) -> list[InstanceResult]:
    return [
        InstanceResult(
            str(r["instance_id"]),
            str(r["error"]["code"]) if "error" in r else "",
            str(r["error"]["message"]) if "error" in r else "",
        )
        for r in answer["results"]
    ]
