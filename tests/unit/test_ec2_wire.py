"""The EC2 wire layer against botocore itself: what botocore's EC2 serializer sends
parses back to the same parameters, and what the layer answers botocore's EC2 parser
reads back to the same output, for every operation of the model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.model import OperationModel, Shape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from mallee.clc import wire

MODEL = wire.service_model()
WHEN = datetime(2026, 11, 28, 21, 4, 5, 123000, tzinfo=UTC)


def example(shape: Shape, name: str, depth: int = 0) -> Any:
    """A value of ``shape`` with every member filled (lists of two), as deep as the
    model goes up to a limit: recursive shapes end in their scalars."""
    kind = shape.type_name
    if kind == "structure":
        if depth > 6:
            return None
        members = {m: example(s, m, depth + 1) for m, s in shape.members.items()}
        filled = {m: v for m, v in members.items() if v is not None}
        return filled or None  # an empty structure has no form on the wire
    if kind == "list":
        entry = example(shape.member, name, depth + 1)
        return None if entry is None else [entry, entry]
    if kind == "string":
        return shape.enum[-1] if shape.enum else f"{name}-value"
    values = {
        "integer": 42,
        "long": 1 << 40,
        "boolean": True,
        "double": 2.5,
        "float": 0.25,
        "timestamp": WHEN,
        "blob": b"\x00binary\xff",
    }
    return values[kind]


def sent_by_botocore(model: OperationModel, params: dict[str, Any]) -> dict[str, str]:
    """The form fields botocore's EC2 serializer makes of ``params``."""
    body = create_serializer("ec2", include_validation=False).serialize_to_request(params, model)[
        "body"
    ]
    return {key: str(value) for key, value in body.items()}


def read_by_botocore(model: OperationModel, xml: bytes, status: int = 200) -> dict[str, Any]:
    response = {"body": xml, "headers": {}, "status_code": status}
    return dict(create_parser("ec2").parse(response, model.output_shape))


@pytest.mark.parametrize("action", MODEL.operation_names)
def test_every_request_botocore_sends_parses_back(action: str) -> None:
    model = MODEL.operation_model(action)
    params = (example(model.input_shape, action) if model.input_shape else None) or {}
    fields = sent_by_botocore(model, params)
    assert fields.pop("Action") == action and fields.pop("Version") == wire.API_VERSION
    assert wire.parse_request(model, fields) == params


@pytest.mark.parametrize("action", MODEL.operation_names)
def test_every_answer_botocore_reads_back(action: str) -> None:
    model = MODEL.operation_model(action)
    output = (example(model.output_shape, action) if model.output_shape else None) or {}
    xml = wire.serialize_response(model, output, "req-0123456789abcdef")
    parsed = read_by_botocore(model, xml)
    assert parsed.pop("ResponseMetadata")["RequestId"] == "req-0123456789abcdef"
    assert parsed == output


def test_a_real_run_instances_request() -> None:
    """The shape the aws CLI sends for `run-instances --count 2 --tag-specifications`."""
    model = wire.operation("RunInstances")
    fields = {
        "Action": "RunInstances",
        "Version": wire.API_VERSION,
        "ImageId": "emi-00000001",
        "MinCount": "2",
        "MaxCount": "2",
        "InstanceType": "m1.small",
        "SecurityGroupId.1": "sg-0123456789abcdef0",
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "name",
        "TagSpecification.1.Tag.1.Value": "web",
        "TagSpecification.1.Tag.2.Key": "team",
        "TagSpecification.1.Tag.2.Value": "ops",
        "DryRun": "false",
    }
    assert wire.parse_request(model, fields) == {
        "ImageId": "emi-00000001",
        "MinCount": 2,
        "MaxCount": 2,
        "InstanceType": "m1.small",
        "SecurityGroupIds": ["sg-0123456789abcdef0"],
        "TagSpecifications": [
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "name", "Value": "web"}, {"Key": "team", "Value": "ops"}],
            }
        ],
        "DryRun": False,
    }


def test_list_entries_keep_their_numbers_order() -> None:
    model = wire.operation("DescribeInstances")
    fields = {"InstanceId.10": "i-3", "InstanceId.2": "i-2", "InstanceId.1": "i-1"}
    assert wire.parse_request(model, fields) == {"InstanceIds": ["i-1", "i-2", "i-3"]}


def test_signature_fields_are_not_parameters() -> None:
    model = wire.operation("DescribeRegions")
    fields = {
        "AWSAccessKeyId": "AKIA",
        "SignatureVersion": "2",
        "SignatureMethod": "HmacSHA256",
        "Timestamp": "2026-11-28T21:00:00Z",
        "Signature": "c2ln",
    }
    assert wire.parse_request(model, fields) == {}


@pytest.mark.parametrize(
    ("action", "fields", "code", "says"),
    [
        ("RunInstances", {"ImageId": "emi-1", "MaxCount": "1"}, "MissingParameter", "MinCount"),
        (
            "RunInstances",
            {"ImageId": "emi-1", "MinCount": "one", "MaxCount": "1"},
            "InvalidParameterValue",
            "(one) for parameter MinCount",
        ),
        (
            "DescribeInstances",
            {"Filter.1.Name": "instance-state-name", "Flter.1.Value.1": "running"},
            "UnknownParameter",
            "Flter.1.Value.1",
        ),
        ("DescribeInstances", {"InstanceId.0": "i-1"}, "UnknownParameter", "InstanceId.0"),
        ("DescribeInstances", {"DryRun": "maybe"}, "InvalidParameterValue", "true or false"),
        (
            "RunInstances",
            {"ImageId": "emi-1", "MinCount": "1_000", "MaxCount": "1"},
            "InvalidParameterValue",
            "Expected an integer",
        ),
        (
            "RequestSpotInstances",
            {"SpotPrice": "0.1", "InstanceCount": "1", "BlockDurationMinutes": " 60"},
            "InvalidParameterValue",
            "Expected an integer",
        ),
        (
            "ImportKeyPair",
            {"KeyName": "k", "PublicKeyMaterial": "***"},
            "InvalidParameterValue",
            "base64",
        ),
    ],
)
def test_bad_requests_name_what_was_wrong(
    action: str, fields: dict[str, str], code: str, says: str
) -> None:
    with pytest.raises(wire.Ec2Error) as caught:
        wire.parse_request(wire.operation(action), fields)
    assert (caught.value.code, caught.value.status) == (code, 400)
    assert says in caught.value.message


def test_enums_are_the_clouds_own() -> None:
    """The model's InstanceType enum lists AWS's types; a cloud names its own."""
    model = wire.operation("RunInstances")
    fields = {"ImageId": "emi-1", "MinCount": "1", "MaxCount": "1", "InstanceType": "lab.huge"}
    assert wire.parse_request(model, fields)["InstanceType"] == "lab.huge"


def test_text_xml_cannot_carry_still_makes_a_readable_answer() -> None:
    """A caller's control characters, echoed in an error, leave the document valid."""
    model = wire.operation("DescribeKeyPairs")
    xml = wire.serialize_error(
        "InvalidKeyPair.NotFound", "The key pair 'a\x01b' does not exist", "r"
    )
    assert read_by_botocore(model, xml, status=400)["Error"]["Message"] == (
        "The key pair 'a\ufffdb' does not exist"
    )


def test_an_action_ec2_does_not_have() -> None:
    with pytest.raises(wire.Ec2Error) as caught:
        wire.operation("LaunchMissiles")
    assert caught.value.code == "InvalidAction"
    assert "LaunchMissiles" in caught.value.message


def test_botocore_reads_the_error_document() -> None:
    model = wire.operation("DescribeInstances")
    xml = wire.serialize_error(
        "InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", "req-1"
    )
    parsed = read_by_botocore(model, xml, status=400)
    assert parsed["Error"] == {
        "Code": "InvalidInstanceID.NotFound",
        "Message": "The instance ID 'i-1' does not exist",
    }
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"


def test_answers_look_like_ec2s() -> None:
    model = wire.operation("DescribeKeyPairs")
    xml = wire.serialize_response(
        model, {"KeyPairs": [{"KeyName": "alice", "CreateTime": WHEN}]}, "req-1"
    ).decode()
    assert xml.startswith("<?xml version='1.0' encoding='utf-8'?>")
    assert f'<DescribeKeyPairsResponse xmlns="{wire.NAMESPACE}"><requestId>req-1</requestId>' in xml
    assert "<keySet><item><keyName>alice</keyName>" in xml
    assert "<createTime>2026-11-28T21:04:05.123Z</createTime>" in xml
    no_output = wire.serialize_response(wire.operation("CreateTags"), {}, "req-2").decode()
    assert "<return>true</return>" in no_output
