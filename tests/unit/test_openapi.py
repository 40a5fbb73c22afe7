"""The NC's OpenAPI document is valid and is what the daemon checks bodies against."""

from pathlib import Path

import pytest
from openapi_spec_validator import validate

from mallee.common.errors import MalformedRequest
from mallee.common.openapi import OpenApiSpec

SPEC = OpenApiSpec(Path(__file__).parents[2] / "daemons" / "nc" / "openapi.yaml")

GOOD = {
    "instance_id": "i-0123456789abcdef0",
    "reservation_id": "r-01234567",
    "owner_id": "alice",
    "vm_type": {"name": "m1.small", "cores": 1, "memory_mb": 256, "disk_gb": 1},
    "image": {"id": "emi-12345678", "url": "http://x/i", "digest": "sha256:" + "a" * 64},
}


def test_document_is_valid_openapi() -> None:
    validate(SPEC.document)


def test_every_route_has_an_operation_id() -> None:
    for path, item in SPEC.document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert operation.get("operationId"), f"{method} {path}"


def test_good_request_passes() -> None:
    SPEC.validate("RunInstanceRequest", GOOD)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"instance_id": "i-xyz"}, "instance_id"),
        ({"vm_type": {**GOOD["vm_type"], "cores": 0}}, "vm_type/cores"),  # type: ignore[dict-item]
        ({"image": {**GOOD["image"], "digest": "md5:1"}}, "image/digest"),  # type: ignore[dict-item]
        ({"net": {"vlan": 5000}}, "net/vlan"),
        ({"surprise": 1}, "body"),
    ],
)
def test_bad_request_names_the_field(change: dict[str, object], where: str) -> None:
    with pytest.raises(MalformedRequest, match=f"^{where}: "):
        SPEC.validate("RunInstanceRequest", {**GOOD, **change})
