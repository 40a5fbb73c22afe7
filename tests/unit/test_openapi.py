"""The NC's and the CC's OpenAPI documents are valid, share their common schemas, and are
what the daemons check bodies against."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from mallee.common.errors import MalformedRequest
from mallee.common.openapi import OpenApiSpec

DAEMONS = Path(__file__).parents[2] / "daemons"
FILES = {component: DAEMONS / component / "openapi.yaml" for component in ("nc", "cc")}
SPECS = {component: OpenApiSpec(path) for component, path in FILES.items()}
NC, CC = SPECS["nc"], SPECS["cc"]

VM_TYPE = {"name": "m1.small", "cores": 1, "memory_mb": 256, "disk_gb": 1}
IMAGE = {"id": "emi-12345678", "url": "http://x/i", "digest": "sha256:" + "a" * 64}
RUN_INSTANCE = {
    "instance_id": "i-0123456789abcdef0",
    "reservation_id": "r-01234567",
    "owner_id": "alice",
    "vm_type": VM_TYPE,
    "image": IMAGE,
}
RUN_INSTANCES = {
    "reservation_id": "r-01234567",
    "owner_id": "alice",
    "vm_type": VM_TYPE,
    "image": IMAGE,
    "kernel_cmdline": "console=ttyS0 root=/dev/vda",
    "instances": [{"instance_id": "i-0123456789abcdef0", "net": {"vlan": 10}}],
}
IDS = {"instance_ids": ["i-0123456789abcdef0", "i-01234567"]}
REGISTER_NODE = {"name": "node-1.rack2", "url": "https://node1.example.org:8775"}
DESCRIBE_RESOURCES = {"vm_types": [VM_TYPE, {**VM_TYPE, "name": "m1.large", "cores": 4}]}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "$ref" else refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


@pytest.mark.parametrize("component", FILES)
def test_document_on_disk_is_valid_openapi(component: str) -> None:
    """As written, with its references to the shared schemas (what openapi-core loads)."""
    path = FILES[component]
    validate(yaml.safe_load(path.read_text()), base_uri=path.resolve().as_uri())


@pytest.mark.parametrize("component", FILES)
def test_served_document_is_valid_openapi_and_stands_alone(component: str) -> None:
    """/v1/openapi.json: a client that fetches it can resolve every reference in it."""
    document = SPECS[component].document
    validate(document)
    assert [ref for ref in refs(document) if not ref.startswith("#/components/")] == []


def test_shared_schemas_are_defined_once() -> None:
    """A document names a shared schema only by reference: no copy that could drift."""
    shared = yaml.safe_load((DAEMONS / "common" / "schemas.yaml").read_text())["$defs"]
    for path in FILES.values():
        schemas = yaml.safe_load(path.read_text())["components"]["schemas"]
        for name in shared.keys() & schemas.keys():
            assert schemas[name] == {"$ref": f"../common/schemas.yaml#/$defs/{name}"}, name
    nc_schemas, cc_schemas = (spec.document["components"]["schemas"] for spec in (NC, CC))
    for name in ("InstanceId", "VmType", "ImageRef", "NetConfig", "Error"):
        assert nc_schemas[name] == cc_schemas[name], name


@pytest.mark.parametrize("component", FILES)
def test_every_route_has_an_operation_id(component: str) -> None:
    for path, item in SPECS[component].document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert operation.get("operationId"), f"{component}: {method} {path}"


@pytest.mark.parametrize("component", FILES)
def test_every_route_taking_a_body_may_answer_413(component: str) -> None:
    for path, item in SPECS[component].document["paths"].items():
        for method, operation in item.items():
            if method != "parameters" and "requestBody" in operation:
                assert "413" in operation["responses"], f"{component}: {method} {path}"


@pytest.mark.parametrize(
    ("spec", "schema", "body"),
    [
        (NC, "RunInstanceRequest", RUN_INSTANCE),
        (CC, "RunInstancesRequest", RUN_INSTANCES),
        (CC, "InstanceIdsRequest", IDS),
        (CC, "InstanceIdsRequest", {"instance_ids": [f"i-{n:08x}" for n in range(1000)]}),
        (CC, "RegisterNodeRequest", REGISTER_NODE),
        (CC, "DescribeResourcesRequest", DESCRIBE_RESOURCES),
        (
            CC,
            "DescribeResourcesRequest",
            {
                "vm_types": [
                    {"name": "x1.huge", "cores": 256, "memory_mb": 4 << 20, "disk_gb": 64 << 10}
                ]
            },
        ),
    ],
)
def test_good_request_passes(spec: OpenApiSpec, schema: str, body: dict[str, Any]) -> None:
    spec.validate(schema, body)


def with_vm_type(**change: object) -> dict[str, object]:
    return {"vm_type": {**VM_TYPE, **change}}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"instance_id": "i-xyz"}, "instance_id"),
        (with_vm_type(cores=0), "vm_type/cores"),
        (with_vm_type(cores=257), "vm_type/cores"),
        (with_vm_type(memory_mb=(4 << 20) + 1), "vm_type/memory_mb"),
        (with_vm_type(disk_gb=(64 << 10) + 1), "vm_type/disk_gb"),
        ({"image": {**IMAGE, "digest": "md5:1"}}, "image/digest"),
        ({"image": {**IMAGE, "url": "http://x/" + "a" * 2048}}, "image/url"),
        ({"kernel_cmdline": "console=ttyS0 " + "x" * 2040}, "kernel_cmdline"),
        ({"kernel_cmdline": "init=/bin/sh\n"}, "kernel_cmdline"),
        ({"net": {"vlan": 5000}}, "net/vlan"),
        ({"net": {"public_mac": "D0:0D:00:00:00:01"}}, "net/public_mac"),
        ({"surprise": 1}, "body"),
    ],
)
def test_bad_nc_run_instance_names_the_field(change: dict[str, object], where: str) -> None:
    with pytest.raises(MalformedRequest, match=f"^{where}: "):
        NC.validate("RunInstanceRequest", {**RUN_INSTANCE, **change})


@pytest.mark.parametrize(
    ("schema", "body", "where"),
    [
        ("RunInstancesRequest", {**RUN_INSTANCES, "instances": []}, "instances"),
        (
            "RunInstancesRequest",
            {**RUN_INSTANCES, "instances": [{"instance_id": "i-0123456789abcdef0"}] * 1001},
            "instances",
        ),
        (
            "RunInstancesRequest",
            {**RUN_INSTANCES, "instances": [{"instance_id": "i-0123456789abcdef0", "vlan": 1}]},
            "instances/0",
        ),
        (
            "RunInstancesRequest",
            {**RUN_INSTANCES, "instances": [{"instance_id": "i-01234567", "net": {"vlan": 0}}]},
            "instances/0/net/vlan",
        ),
        ("RunInstancesRequest", {**RUN_INSTANCES, **with_vm_type(cores=257)}, "vm_type/cores"),
        ("RunInstancesRequest", {**RUN_INSTANCES, "owner_id": ""}, "owner_id"),
        ("RunInstancesRequest", {**RUN_INSTANCES, "reservation_id": "r-1"}, "reservation_id"),
        ("InstanceIdsRequest", {"instance_ids": []}, "instance_ids"),
        ("InstanceIdsRequest", {"instance_ids": ["i-01234567"] * 1001}, "instance_ids"),
        ("InstanceIdsRequest", {"instance_ids": ["i-01234567", "vol-1"]}, "instance_ids/1"),
        ("RegisterNodeRequest", {**REGISTER_NODE, "name": "-node"}, "name"),
        ("RegisterNodeRequest", {**REGISTER_NODE, "url": "https://node1/v1/"}, "url"),
        ("RegisterNodeRequest", {**REGISTER_NODE, "url": "https://" + "n" * 300}, "url"),
        ("RegisterNodeRequest", {"name": "node1"}, "body"),
        ("DescribeResourcesRequest", {"vm_types": []}, "vm_types"),
        ("DescribeResourcesRequest", {"vm_types": [VM_TYPE] * 101}, "vm_types"),
        (
            "DescribeResourcesRequest",
            {"vm_types": [VM_TYPE, {**VM_TYPE, "memory_mb": 8}]},
            "vm_types/1/memory_mb",
        ),
    ],
)
def test_bad_cc_request_names_the_field(schema: str, body: dict[str, Any], where: str) -> None:
    with pytest.raises(MalformedRequest, match=f"^{where}: "):
        CC.validate(schema, body)


def test_a_shared_schema_validates_alone() -> None:
    """describeInstances checks each instance_id query value against InstanceId."""
    CC.validate("InstanceId", "i-0123456789abcdef0", where="instance_id")
    with pytest.raises(MalformedRequest, match=r"^instance_id: "):
        NC.validate("InstanceId", "i-0123", where="instance_id")


def test_a_document_may_not_shadow_a_shared_schema(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "nc").mkdir()
    (tmp_path / "common" / "schemas.yaml").write_text(
        yaml.safe_dump({"$defs": {"Mac": {"type": "string"}, "Nic": {"$ref": "#/$defs/Mac"}}})
    )
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {},
        "components": {
            "schemas": {
                "Nic": {"$ref": "../common/schemas.yaml#/$defs/Nic"},
                "Mac": {"type": "integer"},  # not the shared Mac that Nic uses
            }
        },
    }
    (tmp_path / "nc" / "openapi.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match="two schemas named 'Mac'"):
        OpenApiSpec(tmp_path / "nc" / "openapi.yaml")
