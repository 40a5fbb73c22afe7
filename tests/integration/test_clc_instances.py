"""Instances end to end: boto3 against a real `mallee-clc`, `mallee-cc` and two
`mallee-nc` booting the tiny guest under TCG. The image is added by the real
`mallee-admin` into the CLC's store, and the NCs fetch it from there over mutual TLS."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.cluster import NetworkedCloud, register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon
from tests.support.ec2 import new_public_key
from tests.support.guest import MARKER, GuestImage, wait_until

WAIT = {"Delay": 1, "MaxAttempts": 180}
USER_DATA = "#!/bin/sh\necho hello\n"


def error_of(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def states(ec2: Any, *ids: str) -> list[str]:
    reservations = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    return [i["State"]["Name"] for r in reservations for i in r["Instances"]]


@pytest.fixture
def cloud(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> tuple[ClcDaemon, str, list[NcDaemon]]:
    """A CLC with one zone of two real NCs and the tiny guest registered."""
    ncs = [nc_factory(public_bridge="user"), nc_factory(public_bridge="user")]
    cc = cc_factory(scheduler="round-robin")
    register(cc, *ncs)
    clc = clc_factory(instance_quota=0)
    clc.admin("cluster", "add", "zone-a", cc.url)
    return clc, clc.add_image("ttylinux", guest.directory), ncs


def test_instances_run_boot_and_end(
    networked_cloud: NetworkedCloud,
) -> None:
    """The whole workflow with boto3: keys, groups, two instances with user-data and
    tags, the waiters, the console, filters, the guest's own metadata, an address."""
    clc, emi, ncs, *_ = networked_cloud
    ec2 = clc.ec2("alice")
    [image] = ec2.describe_images(ImageIds=[emi])["Images"]
    assert (image["ImageType"], image["State"], image["Public"]) == ("machine", "available", True)
    assert image["KernelId"].startswith("eki-") and image["RamdiskId"].startswith("eri-")

    public_key = new_public_key()
    ec2.import_key_pair(KeyName="k", PublicKeyMaterial=public_key)
    ec2.create_security_group(GroupName="web", Description="web servers")
    ec2.authorize_security_group_ingress(
        GroupName="web", IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    reservation = ec2.run_instances(
        ImageId=emi,
        MinCount=2,
        MaxCount=2,
        InstanceType="m1.small",
        KeyName="k",
        SecurityGroups=["web"],
        UserData=USER_DATA,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "w"}]}],
    )
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    assert [i["State"]["Name"] for i in reservation["Instances"]] == ["pending", "pending"]
    assert [i["AmiLaunchIndex"] for i in reservation["Instances"]] == [0, 1]
    assert reservation["Instances"][0]["SecurityGroups"][0]["GroupName"] == "web"
    assert reservation["Instances"][0]["Placement"]["AvailabilityZone"] == "zone-a"

    ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=WAIT)
    # round-robin: one on each node, each from the image the NC fetched from the CLC
    assert sorted(len(nc.domains()) for nc in ncs) == [1, 1]

    for instance_id in ids:
        output = ""

        def booted(instance_id: str = instance_id) -> bool:
            nonlocal output
            output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
            return MARKER in output

        wait_until(booted, 240, f"{MARKER} on the console of {instance_id}")
        # DHCP gave the address the CLC chose; the CLC knew the guest by it
        [described] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ]
        assert f"mallee-guest: ip eth0 {described['PrivateIpAddress']}" in output, output
        assert "mallee-guest: metadata ssh key installed" in output, output
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output
        assert f"mallee-guest: user-data {len(USER_DATA)} bytes" in output, output

    tagged = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": ["w"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    assert sorted(i["InstanceId"] for r in tagged for i in r["Instances"]) == sorted(ids)
    assert (
        ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["x*"]}])["Reservations"]
        == []
    )
    user_data = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]).decode() == USER_DATA
    statuses = ec2.describe_instance_status(InstanceIds=ids)["InstanceStatuses"]
    assert {s["InstanceStatus"]["Status"] for s in statuses} == {"ok"}

    bob = clc.ec2("bob")
    assert error_of(lambda: bob.describe_instances(InstanceIds=ids[:1])) == (
        "InvalidInstanceID.NotFound",
        400,
    )
    assert error_of(lambda: bob.terminate_instances(InstanceIds=ids[:1])) == (
        "InvalidInstanceID.NotFound",
        400,
    )
    assert bob.describe_instances()["Reservations"] == []

    allocated = ec2.allocate_address(Domain="standard")
    assert allocated["PublicIp"] == "192.0.2.33"  # the pool's first host address
    # this zone's public mode is system: its CC cannot translate (test_cc_public_modes
    # associates in managed mode), and the association is undone
    assert error_of(
        lambda: ec2.associate_address(PublicIp=allocated["PublicIp"], InstanceId=ids[0])
    ) == ("UnsupportedOperation", 400)
    [described] = ec2.describe_instances(InstanceIds=ids[:1])["Reservations"][0]["Instances"]
    assert "PublicIpAddress" not in described
    assert error_of(
        lambda: bob.associate_address(PublicIp=allocated["PublicIp"], InstanceId=ids[1])
    ) == ("InvalidAddress.NotFound", 400)
    assert bob.describe_addresses()["Addresses"] == []
    ec2.disassociate_address(PublicIp=allocated["PublicIp"])
    [address] = ec2.describe_addresses()["Addresses"]
    assert "InstanceId" not in address
    ec2.release_address(AllocationId=allocated["AllocationId"])
    assert ec2.describe_addresses()["Addresses"] == []

    ended = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert [(e["PreviousState"]["Name"], e["CurrentState"]["Name"]) for e in ended] == [
        ("running", "shutting-down")
    ] * 2
    ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=WAIT)
    wait_until(lambda: not any(nc.domains() for nc in ncs), 60, "the domains to go")
    [first] = ec2.describe_instances(InstanceIds=ids[:1])["Reservations"][0]["Instances"][:1]
    assert first["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    ec2.delete_security_group(GroupName="web")
    ec2.delete_key_pair(KeyName="k")


def test_requests_that_cannot_run_change_nothing(
    cloud: tuple[ClcDaemon, str, list[NcDaemon]],
) -> None:
    clc, emi, ncs = cloud
    ec2 = clc.ec2("carol")

    def run(**params: Any) -> tuple[str, int]:
        asked = {"ImageId": emi, "MinCount": 1, "MaxCount": 1, **params}
        return error_of(lambda: ec2.run_instances(**asked))

    assert run(ImageId="emi-00000000000000000") == ("InvalidAMIID.NotFound", 400)
    assert run(InstanceType="m9.huge") == ("InvalidParameterValue", 400)
    assert run(KeyName="nope") == ("InvalidKeyPair.NotFound", 400)
    assert run(SecurityGroups=["nope"]) == ("InvalidGroup.NotFound", 400)
    assert run(MinCount=3, MaxCount=2) == ("InvalidParameterValue", 400)
    assert run(Placement={"AvailabilityZone": "zone-z"}) == ("InvalidParameterValue", 400)
    # more than two nodes of two cores hold
    assert run(MinCount=40, MaxCount=40) == ("InsufficientInstanceCapacity", 503)
    kernel = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])
    assert run(ImageId=kernel["Images"][0]["ImageId"]) == ("InvalidAMIID.NotFound", 400)
    assert ec2.describe_instances()["Reservations"] == []
    assert not any(nc.domains() for nc in ncs)


def test_a_client_token_runs_a_request_once(
    cloud: tuple[ClcDaemon, str, list[NcDaemon]],
) -> None:
    clc, emi, ncs = cloud
    ec2 = clc.ec2("dave")
    first = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, ClientToken="once")
    again = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, ClientToken="once")
    assert again["ReservationId"] == first["ReservationId"]
    assert again["Instances"][0]["InstanceId"] == first["Instances"][0]["InstanceId"]
    assert again["Instances"][0]["ClientToken"] == "once"
    assert error_of(
        lambda: ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=2, ClientToken="once")
    ) == ("IdempotentParameterMismatch", 400)
    [instance_id] = [first["Instances"][0]["InstanceId"]]
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
    assert sum(len(nc.domains()) for nc in ncs) == 1
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
