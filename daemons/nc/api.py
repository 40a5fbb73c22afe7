"""The NC's internal API: parse, call the NodeController, render. See openapi.yaml."""

from __future__ import annotations

from typing import Any

import flask

from mallee.common import rpc
from mallee.common.capacity import VmType
from mallee.nc.model import ImageRef, Instance, NetConfig, SecurityGroup
from mallee.nc.service import NodeController

bp = flask.Blueprint("nc", __name__, url_prefix="/v1")


def _nc() -> NodeController:
    nc: NodeController = flask.current_app.extensions["mallee.nc"]
    return nc


def _image(body: dict[str, Any] | None) -> ImageRef | None:
    return ImageRef(**body) if body else None


@bp.post("/instances")
def run_instance() -> tuple[dict[str, Any], int]:
    body = rpc.json_body("RunInstanceRequest")
    root = _image(body["image"])
    assert root is not None
    instance = Instance(
        instance_id=body["instance_id"],
        reservation_id=body["reservation_id"],
        owner_id=body["owner_id"],
        vm_type=VmType(**body["vm_type"]),
        image=root,
        kernel=_image(body.get("kernel")),
        ramdisk=_image(body.get("ramdisk")),
        kernel_cmdline=body.get("kernel_cmdline"),
        net=NetConfig.from_api(body.get("net", {})),
    )
    return _nc().run_instance(instance).to_api(), 202


@bp.get("/instances")
def describe_instances() -> dict[str, Any]:
    ids = rpc.query_list("instance_id", "InstanceId")
    return {"instances": [i.to_api() for i in _nc().describe_instances(ids)]}


@bp.delete("/instances/<instance_id>")
def terminate_instance(instance_id: str) -> dict[str, Any]:
    return _nc().terminate_instance(instance_id).to_api()


@bp.post("/instances/<instance_id>/reboot")
def reboot_instance(instance_id: str) -> dict[str, Any]:
    return _nc().reboot_instance(instance_id).to_api()


@bp.get("/instances/<instance_id>/console")
def get_console_output(instance_id: str) -> dict[str, Any]:
    return {"instance_id": instance_id, "output": _nc().console_output(instance_id)}


@bp.get("/resource")
def describe_resource() -> dict[str, Any]:
    return _nc().describe_resource()


@bp.get("/networks")
def describe_networks() -> dict[str, Any]:
    return {"networks": _nc().networks.started()}


@bp.post("/networks")
def start_network() -> dict[str, Any]:
    body = rpc.json_body("StartNetworkRequest")
    return _nc().start_network(body["vlan"], body.get("peers", []))


@bp.delete("/networks/<int:vlan>")
def stop_network(vlan: int) -> dict[str, Any]:
    _nc().stop_network(vlan)
    return {"vlan": vlan}


@bp.get("/security-groups")
def describe_security_groups() -> dict[str, Any]:
    groups = _nc().firewall.groups.values()
    return {"security_groups": [g.to_api() for g in groups]}


@bp.put("/security-groups/<group_id>")
def put_security_group(group_id: str) -> dict[str, Any]:
    rpc.path_value("SecurityGroupId", group_id)
    group = SecurityGroup.from_api(group_id, rpc.json_body("SecurityGroup"))
    _nc().put_security_group(group)
    return group.to_api()


@bp.delete("/security-groups/<group_id>")
def delete_security_group(group_id: str) -> dict[str, Any]:
    _nc().delete_security_group(group_id)
    return {"group_id": group_id}
