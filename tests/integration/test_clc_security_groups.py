"""Security groups through boto3, as a user sets them up before running instances:
made, opened (both of EC2's forms, ranges and peer groups), shown, closed, deleted."""

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


def group(ec2: Any, group_id: str) -> dict[str, Any]:
    [found] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return dict(found)


def test_a_group_opened_shown_closed_and_deleted(clc_factory: Callable[..., ClcDaemon]) -> None:
    ec2 = clc_factory().ec2("alice")
    web = ec2.create_security_group(GroupName="web", Description="web servers")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="databases")["GroupId"]
    assert code_of(lambda: ec2.create_security_group(GroupName="web", Description="again")) == (
        "InvalidGroup.Duplicate"
    )

    # the aws CLI's --protocol/--port/--cidr form is the flat one
    ec2.authorize_security_group_ingress(
        GroupName="web", IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    ec2.authorize_security_group_ingress(
        GroupId=web,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 80,
                "ToPort": 80,
                "IpRanges": [{"CidrIp": "10.1.2.3/16"}],
            },
            {
                "IpProtocol": "icmp",
                "FromPort": -1,
                "ToPort": -1,
                "IpRanges": [{"CidrIp": "192.0.2.0/24"}],
            },
        ],
    )
    ec2.authorize_security_group_ingress(
        GroupId=db,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 5432,
                "ToPort": 5432,
                "UserIdGroupPairs": [{"GroupId": web}],
            }
        ],
    )
    shown = group(ec2, web)
    assert (shown["GroupName"], shown["Description"], shown["OwnerId"]) == (
        "web",
        "web servers",
        "alice",
    )
    ingress = {(p["IpProtocol"], p.get("FromPort")): p for p in shown["IpPermissions"]}
    assert ingress[("tcp", 22)]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    assert ingress[("tcp", 80)]["IpRanges"] == [{"CidrIp": "10.1.0.0/16"}]  # as a network
    assert ingress[("icmp", -1)]["IpRanges"] == [{"CidrIp": "192.0.2.0/24"}]
    assert shown["IpPermissionsEgress"] == [
        {
            "IpProtocol": "-1",
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            "UserIdGroupPairs": [],
            "Ipv6Ranges": [],
            "PrefixListIds": [],
        }
    ]
    [peer] = group(ec2, db)["IpPermissions"]
    assert peer["UserIdGroupPairs"] == [{"GroupId": web, "GroupName": "web", "UserId": "alice"}]

    assert (
        code_of(
            lambda: ec2.authorize_security_group_ingress(
                GroupId=web, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
            )
        )
        == "InvalidPermission.Duplicate"
    )
    assert code_of(lambda: ec2.delete_security_group(GroupId=web)) == "DependencyViolation"

    ec2.revoke_security_group_ingress(
        GroupId=web, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    assert ("tcp", 22) not in {
        (p["IpProtocol"], p.get("FromPort")) for p in group(ec2, web)["IpPermissions"]
    }
    assert (
        code_of(
            lambda: ec2.revoke_security_group_ingress(
                GroupId=web, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
            )
        )
        == "InvalidPermission.NotFound"
    )

    ec2.delete_security_group(GroupId=db)
    ec2.delete_security_group(GroupName="web")
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]
    assert code_of(lambda: ec2.delete_security_group(GroupName="default")) == "CannotDelete"


GOOD = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}


def cidr(text: str) -> list[dict[str, str]]:
    return [{"CidrIp": text}]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (
            {"IpProtocol": "tcp", "FromPort": 90, "ToPort": 80, "IpRanges": cidr("0.0.0.0/0")},
            "InvalidParameterValue",
        ),
        (
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 70000, "IpRanges": cidr("0.0.0.0/0")},
            "InvalidParameterValue",
        ),
        (
            {"IpProtocol": "sctp", "FromPort": 1, "ToPort": 2, "IpRanges": cidr("0.0.0.0/0")},
            "InvalidParameterValue",
        ),
        (
            {"IpProtocol": "icmp", "FromPort": -1, "ToPort": 5, "IpRanges": cidr("0.0.0.0/0")},
            "InvalidParameterValue",
        ),
        (
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": cidr("10.0.0.0/33")},
            "InvalidParameterValue",
        ),
        ({"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80}, "MissingParameter"),
    ],
)
def test_bad_rules_name_what_is_wrong_and_change_nothing(
    clc_factory: Callable[..., ClcDaemon], bad: dict[str, Any], code: str
) -> None:
    """A good rule given with a bad one in the same call is not made either."""
    ec2 = clc_factory().ec2("alice")
    web = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    call = lambda: ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[GOOD, bad])  # noqa: E731
    assert code_of(call) == code
    assert group(ec2, web)["IpPermissions"] == []


def test_a_whole_peer_group_and_the_forms_that_do_not_mix(
    clc_factory: Callable[..., ClcDaemon],
) -> None:
    ec2 = clc_factory().ec2("alice")
    web = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    ec2.create_security_group(GroupName="lb", Description="load balancers")
    # EC2-Classic's "from the members of lb": all of TCP, UDP and ICMP
    ec2.authorize_security_group_ingress(GroupId=web, SourceSecurityGroupName="lb")
    opened = {
        (p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in group(ec2, web)["IpPermissions"]
    }
    assert opened == {("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)}
    ec2.revoke_security_group_ingress(GroupId=web, SourceSecurityGroupName="lb")
    assert group(ec2, web)["IpPermissions"] == []

    mixed = lambda: ec2.authorize_security_group_ingress(  # noqa: E731
        GroupId=web, SourceSecurityGroupName="lb", IpProtocol="tcp", FromPort=1, ToPort=2
    )
    assert code_of(mixed) == "InvalidParameterCombination"
    assert code_of(lambda: ec2.create_security_group(GroupName="default", Description="x")) == (
        "InvalidGroup.Reserved"
    )
    ec2.authorize_security_group_egress(GroupId=web, IpPermissions=[GOOD])
    assert len(group(ec2, web)["IpPermissionsEgress"]) == 2  # all, as made, and port 22
    ec2.revoke_security_group_egress(GroupId=web, IpPermissions=[GOOD])
    assert len(group(ec2, web)["IpPermissionsEgress"]) == 1


def test_users_touch_only_their_own_groups(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    web = alice.create_security_group(GroupName="web", Description="web")["GroupId"]
    assert code_of(lambda: bob.describe_security_groups(GroupIds=[web])) == "InvalidGroup.NotFound"
    assert (
        code_of(
            lambda: bob.authorize_security_group_ingress(
                GroupId=web, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
            )
        )
        == "InvalidGroup.NotFound"
    )
    assert code_of(lambda: bob.delete_security_group(GroupId=web)) == "InvalidGroup.NotFound"
    assert [g["GroupName"] for g in bob.describe_security_groups()["SecurityGroups"]] == ["default"]
    assert code_of(lambda: alice.describe_security_groups(GroupIds=["sg-nothex"])) == (
        "InvalidGroupId.Malformed"
    )
    # a rule of bob's may not name alice's group: by id it is not there for him, and
    # naming her as the owner is refused (not quietly read as his own group of that name)
    mine = bob.create_security_group(GroupName="web", Description="bob's web")["GroupId"]
    by_id = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": web}]}
    ]
    assert (
        code_of(lambda: bob.authorize_security_group_ingress(GroupId=mine, IpPermissions=by_id))
        == "InvalidGroup.NotFound"
    )
    hers = [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "UserIdGroupPairs": [{"UserId": "alice", "GroupName": "web"}],
        }
    ]
    assert (
        code_of(lambda: bob.authorize_security_group_ingress(GroupId=mine, IpPermissions=hers))
        == "InvalidParameterValue"
    )
    assert group(bob, mine)["IpPermissions"] == []
    root = clc.ec2("root", admin=True)  # an admin sees alice's group, changes it not
    assert group(root, web)["OwnerId"] == "alice"
    assert code_of(lambda: root.delete_security_group(GroupId=web)) == "InvalidGroup.NotFound"
