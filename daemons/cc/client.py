"""The typed client of the CC's internal API: one method per operation of the seed the
CLC uses, answers as plain data. The CLC calls its clusters only through this."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mallee.common.capacity import VmType
from mallee.common.rpc import RemoteError, RpcClient


@dataclass(frozen=True)
class TypeRoom:
    """describeResources for one instance type: how many fit now, and on empty nodes."""

    vm_type: VmType
    available: int
    maximum: int


class CcClient:
    """One CC, through an RpcClient whose timeouts and retries suit the calls made."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    def describe_resources(self, vm_types: list[VmType]) -> list[TypeRoom]:
        body = {"vm_types": [asdict(vm) for vm in vm_types]}
        answer = self.rpc.call("POST", "/v1/resources/describe", body)
        by_name = {vm.name: vm for vm in vm_types}
        try:
            return [
                TypeRoom(by_name[t["name"]], int(t["available"]), int(t["max"]))
                for t in answer["vm_types"]
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(
                502, "BadAnswer", f"{self.rpc.base_url}: an answer not in the CC's API ({e!r})"
            ) from None
