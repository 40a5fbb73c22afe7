"""The CC's internal API: parse, call the ClusterController, render. See openapi.yaml."""

from __future__ import annotations

from typing import Any

import flask

from mallee.cc.service import ClusterController
from mallee.common import rpc
from mallee.common.capacity import VmType
from mallee.nc.model import SecurityGroup

bp = flask.Blueprint("cc", __name__, url_prefix="/v1")


def _cc() -> ClusterController:
    cc: ClusterController = flask.current_app.extensions["mallee.cc"]
    return cc


@bp.get("/nodes")
def describe_nodes() -> dict[str, Any]:
    return {"nodes": _cc().describe_nodes()}


@bp.post("/nodes")
def register_node() -> tuple[dict[str, Any], int]:
    body = rpc.json_body("RegisterNodeRequest")
    return _cc().register_node(body["name"], body["url"]), 201


@bp.delete("/nodes/<name>")
def deregister_node(name: str) -> dict[str, Any]:
    _cc().deregister_node(name, force=flask.request.args.get("force") == "true")
    return {"name": name}


@bp.post("/instances")
def run_instances() -> tuple[dict[str, Any], int]:
    body = rpc.json_body("RunInstancesRequest")
    instances = _cc().run_instances(body)
    return {"reservation_id": body["reservation_id"], "instances": instances}, 201


@bp.get("/instances")
def describe_instances() -> dict[str, Any]:
    ids = rpc.query_list("instance_id", "InstanceId")
    return {"instances": _cc().describe_instances(ids)}


@bp.post("/instances/terminate")
def terminate_instances() -> dict[str, Any]:
    body = rpc.json_body("InstanceIdsRequest")
    return {"results": _cc().terminate_instances(body["instance_ids"])}


@bp.post("/instances/reboot")
def reboot_instances() -> dict[str, Any]:
    body = rpc.json_body("InstanceIdsRequest")
    return {"results": _cc().reboot_instances(body["instance_ids"])}


@bp.get("/instances/<instance_id>/console")
def get_console_output(instance_id: str) -> dict[str, Any]:
    return _cc().console_output(instance_id)


@bp.post("/resources/describe")
def describe_resources() -> dict[str, Any]:
    body = rpc.json_body("DescribeResourcesRequest")
    vm_types = [VmType(**t) for t in body["vm_types"]]
    return {"vm_types": _cc().describe_resources(vm_types)}


@bp.get("/security-groups")
def describe_security_groups() -> dict[str, Any]:
    return {"security_groups": [g.to_api() for g in _cc().security_groups()]}


@bp.put("/security-groups/<group_id>")
def put_security_group(group_id: str) -> dict[str, Any]:
    rpc.path_value("SecurityGroupId", group_id)
    group = SecurityGroup.from_api(group_id, rpc.json_body("SecurityGroup"))
    _cc().put_security_group(group)
    return group.to_api()


@bp.delete("/security-groups/<group_id>")
def delete_security_group(group_id: str) -> dict[str, Any]:
    _cc().delete_security_group(group_id)
    return {"group_id": group_id}


@bp.get("/elastic-addresses")
def describe_elastic_addresses() -> dict[str, Any]:
    found = _cc().elastic_addresses()
    return {"elastic_addresses": [{"public_ip": a, "instance_id": i} for a, i in found.items()]}


@bp.put("/elastic-addresses/<public_ip>")
def associate_address(public_ip: str) -> dict[str, Any]:
    rpc.path_value("Ipv4Address", public_ip)
    instance_id = rpc.json_body("ElasticAssociation")["instance_id"]
    _cc().associate_address(public_ip, instance_id)
    return {"public_ip": public_ip, "instance_id": instance_id}


@bp.delete("/elastic-addresses/<public_ip>")
def disassociate_address(public_ip: str) -> dict[str, Any]:
    rpc.path_value("Ipv4Address", public_ip)
    _cc().disassociate_address(public_ip)
    return {"public_ip": public_ip}
