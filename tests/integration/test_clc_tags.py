"""Tags and filters through boto3: tags given at creation (TagSpecification) and after
(CreateTags), found again by DescribeTags and by filters on the resources' own
describes, wildcards included; deleted with their values or with their resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.daemons import ClcDaemon


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def tag_list(ec2: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [(t["ResourceId"], t["Key"], t["Value"]) for t in ec2.describe_tags(**kwargs)["Tags"]]


def test_tags_given_found_and_gone(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    ec2, bob = clc.ec2("alice"), clc.ec2("bob")
    laptop = ec2.create_key_pair(
        KeyName="laptop",
        TagSpecifications=[
            {"ResourceType": "key-pair", "Tags": [{"Key": "owner", "Value": "ops"}]}
        ],
    )
    assert laptop["Tags"] == [{"Key": "owner", "Value": "ops"}]
    desk = ec2.create_key_pair(KeyName="desk")["KeyPairId"]
    web = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    ec2.create_tags(Resources=[desk, web], Tags=[{"Key": "env", "Value": "prod"}])
    ec2.create_tags(Resources=[desk], Tags=[{"Key": "env", "Value": "test"}])  # replaces

    assert tag_list(ec2, Filters=[{"Name": "key", "Values": ["env"]}]) == sorted(
        [(desk, "env", "test"), (web, "env", "prod")]
    )
    assert tag_list(ec2, Filters=[{"Name": "resource-type", "Values": ["security-group"]}]) == [
        (web, "env", "prod")
    ]
    assert tag_list(bob) == []  # alice's tags are alice's

    def key_names(*filters: dict[str, Any]) -> list[str]:
        answer = ec2.describe_key_pairs(Filters=list(filters))["KeyPairs"]
        return sorted(k["KeyName"] for k in answer)

    assert key_names({"Name": "tag:env", "Values": ["te*"]}) == ["desk"]
    assert key_names({"Name": "tag-key", "Values": ["owner", "env"]}) == ["desk", "laptop"]
    assert key_names({"Name": "key-name", "Values": ["l?ptop"]}) == ["laptop"]
    assert (
        key_names({"Name": "key-name", "Values": ["*"]}, {"Name": "tag:env", "Values": ["prod"]})
        == []
    )
    [group] = ec2.describe_security_groups(Filters=[{"Name": "tag:env", "Values": ["prod"]}])[
        "SecurityGroups"
    ]
    assert group["GroupId"] == web and group["Tags"] == [{"Key": "env", "Value": "prod"}]
    assert (
        code_of(lambda: key_names({"Name": "color", "Values": ["red"]})) == "InvalidParameterValue"
    )

    ec2.delete_tags(Resources=[desk], Tags=[{"Key": "env", "Value": "prod"}])  # not its value
    assert (desk, "env", "test") in tag_list(ec2)
    ec2.delete_tags(Resources=[desk], Tags=[{"Key": "env"}])
    assert (desk, "env", "test") not in tag_list(ec2)
    ec2.delete_security_group(GroupId=web)
    assert tag_list(ec2) == [(laptop["KeyPairId"], "owner", "ops")]  # gone with the group


def test_tags_refused(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    key = alice.create_key_pair(KeyName="laptop")["KeyPairId"]
    assert code_of(lambda: bob.create_tags(Resources=[key], Tags=[{"Key": "x", "Value": "y"}])) == (
        "InvalidKeyPair.NotFound"
    )
    alice.create_tags(Resources=[key], Tags=[{"Key": "team", "Value": "ops"}])
    assert code_of(lambda: bob.delete_tags(Resources=[key])) == "InvalidKeyPair.NotFound"
    alice.delete_tags(Resources=[key])  # every tag of it
    assert (
        code_of(lambda: alice.create_tags(Resources=[key], Tags=[{"Key": "aws:x", "Value": "y"}]))
        == "InvalidParameterValue"
    )
    assert (
        code_of(
            lambda: alice.create_tags(Resources=["vol-1234"], Tags=[{"Key": "x", "Value": "y"}])
        )
        == "InvalidID"
    )
    many = [{"Key": f"k{n}", "Value": ""} for n in range(51)]
    assert code_of(lambda: alice.create_tags(Resources=[key], Tags=many)) == "TagLimitExceeded"
    assert alice.describe_tags()["Tags"] == []  # the refused call changed nothing
    wrong_type = [{"ResourceType": "instance", "Tags": [{"Key": "x", "Value": "y"}]}]
    assert (
        code_of(lambda: alice.create_key_pair(KeyName="other", TagSpecifications=wrong_type))
        == "InvalidParameterValue"
    )
    assert [k["KeyName"] for k in alice.describe_key_pairs()["KeyPairs"]] == ["laptop"]


def test_account_attributes(clc_factory: Callable[..., ClcDaemon]) -> None:
    ec2 = clc_factory().ec2("alice")
    attributes = ec2.describe_account_attributes()["AccountAttributes"]
    values = {
        a["AttributeName"]: [v["AttributeValue"] for v in a["AttributeValues"]] for a in attributes
    }
    assert values == {"supported-platforms": ["EC2"], "default-vpc": ["none"]}
