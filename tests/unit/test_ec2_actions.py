"""Every action of the table, called as a user would, in one workflow through the EC2
front end (a SQLite database, a cluster played by a stand-in CC): each answers 200 and
botocore reads its answer; the walk must cover the whole table."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mallee.cc.client import CcClient, ClusterInstance, InstanceResult, TypeRoom
from mallee.clc import clusters, db, images, securitygroups, users
from mallee.clc.actions import ACTIONS
from mallee.clc.app import build_cloud
from mallee.clc.config import ClcConfig
from mallee.clc.frontend import Ec2Frontend
from mallee.common.capacity import VmType
from mallee.common.metrics import Metrics
from mallee.common.rpc import RemoteError, RpcClient
from mallee.nc.model import Rule, SecurityGroup
from tests.support.ec2 import call
from tests.support.guest import wait_until


class StandInCc(CcClient):
    """A cluster of room for ten of each type whose instances run at once."""

    def __init__(self) -> None:
        super().__init__(RpcClient("https://cc.invalid"))
        self.states: dict[str, str] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.elastic: dict[str, str] = {}
        self.nets: dict[str, dict[str, Any]] = {}  # each instance's NICs, as sent
        self.routes_public_traffic = True  # false: as a CC in public_mode system

    def describe_resources(self, vm_types: list[VmType]) -> list[TypeRoom]:
        return [TypeRoom(vm, 10, 10) for vm in vm_types]

    def run_instances(self, request: dict[str, Any]) -> list[ClusterInstance]:
        for item in request["instances"]:
            self.states[item["instance_id"]] = "running"
            self.nets[item["instance_id"]] = item["net"]
        return self.describe_instances()

    def describe_instances(self) -> list[ClusterInstance]:
        return [ClusterInstance(i, s, "node-1", True, "") for i, s in self.states.items()]

    def terminate_instances(self, instance_ids: list[str]) -> list[InstanceResult]:
        self.states.update(dict.fromkeys(instance_ids, "terminated"))
        return [InstanceResult(i) for i in instance_ids]

    def reboot_instances(self, instance_ids: list[str]) -> list[InstanceResult]:
        return [InstanceResult(i) for i in instance_ids]

    def console_output(self, instance_id: str) -> str:
        return "MALLEE-BOOT-OK\n"

    def describe_security_groups(self) -> list[SecurityGroup]:
        return list(self.groups.values())

    def put_security_group(self, group: SecurityGroup) -> None:
        self.groups[group.group_id] = group

    def delete_security_group(self, group_id: str) -> None:
        del self.groups[group_id]

    def describe_elastic_addresses(self) -> dict[str, str]:
        return dict(self.elastic)

    def associate_address(self, public_ip: str, instance_id: str) -> None:
        if not self.routes_public_traffic:
            raise RemoteError(409, "UnsupportedOperation", "this cluster's public_mode is system")
        self.elastic[public_ip] = instance_id

    def disassociate_address(self, public_ip: str) -> None:
        del self.elastic[public_ip]


Ask = Callable[..., dict[str, Any]]


def asking(frontend: Ec2Frontend, default: users.Credentials) -> Ask:
    """``ok(action, caller=default, **params)``: the answer to a call that must succeed."""

    def ok(action: str, caller: users.Credentials = default, **params: Any) -> dict[str, Any]:
        status, answer = call(frontend, caller, action, **params)
        assert status == 200, answer
        return answer

    return ok


def public_image(ok: Ask, admin: users.Credentials, location: str) -> str:
    """An image every user may run, registered by ``admin`` from ``location``."""
    emi: str = ok("RegisterImage", admin, Name="disk", ImageLocation=location)["ImageId"]
    ok("ModifyImageAttribute", admin, ImageId=emi, LaunchPermission={"Add": [{"Group": "all"}]})
    return emi


Cloud = tuple[Ec2Frontend, users.Credentials, users.Credentials, str]


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return make_cloud(tmp_path)


def make_cloud(tmp_path: Path, **settings: Any) -> Cloud:
    """A CLC (no daemon) with a zone whose CC is a StandInCc; alice, root (an admin),
    and a disk root may register (its location)."""
    url = f"sqlite:///{tmp_path / 'clc.db'}"
    db.migrate(url)
    sessions = db.sessions_for(url)
    config = ClcConfig(
        image_dir=str(tmp_path / "images"),
        instance_quota=0,
        public_addresses=["192.0.2.8/30"],
        **settings,
    )
    cc = StandInCc()
    cloud = build_cloud(config, sessions, lambda _url: cc, "https://clc", Metrics("test"))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    with sessions.write.begin() as session:
        user = users.create_user(session, "alice")
        admin = users.create_user(session, "root", admin=True)
        for name in ("alice", "root"):
            securitygroups.default_group(session, name)
        clusters.add(session, "zone-a", "https://cc.invalid")
    location = cloud.store.add(disk).digest  # no poll yet: a new zone is asked when needed
    return Ec2Frontend(sessions, cloud), user, admin, location


def test_every_action_answers_what_botocore_reads(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    frontend, alice, root, location = cloud
    called: set[str] = set()

    asked = asking(frontend, alice)

    def ok(action: str, caller: users.Credentials = alice, **params: Any) -> dict[str, Any]:
        called.add(action)
        return asked(action, caller, **params)

    emi = ok("RegisterImage", root, Name="disk", ImageLocation=location)["ImageId"]
    assert ok("DescribeImages", ImageIds=[])["Images"] == []  # private: the admin's own
    ok("ModifyImageAttribute", root, ImageId=emi, LaunchPermission={"Add": [{"Group": "all"}]})
    assert [i["ImageId"] for i in ok("DescribeImages", ImageIds=[emi])["Images"]] == [emi]
    assert ok("DescribeImageAttribute", ImageId=emi, Attribute="description")["ImageId"] == emi
    ok("CreateKeyPair", KeyName="made")
    ok(
        "ImportKeyPair",
        KeyName="mine",
        PublicKeyMaterial=b"ssh-ed25519 "
        + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))),
    )
    assert len(ok("DescribeKeyPairs")["KeyPairs"]) == 2
    group = ok("CreateSecurityGroup", GroupName="web", Description="web")["GroupId"]
    rule: dict[str, Any] = {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "CidrIp": "10.0.0.0/8",
    }
    for change in ("Authorize", "Revoke"):
        for direction in ("Ingress", "Egress"):
            ok(f"{change}SecurityGroup{direction}", GroupId=group, **rule)
    assert len(ok("DescribeSecurityGroups")["SecurityGroups"]) == 2
    ok("DescribeRegions")
    assert ok("DescribeAvailabilityZones")["AvailabilityZones"][0]["ZoneName"] == "zone-a"
    ok("DescribeInstanceTypes")
    ok("DescribeAccountAttributes")

    ran = ok(
        "RunInstances",
        ImageId=emi,
        MinCount=2,
        MaxCount=2,
        KeyName="mine",
        SecurityGroups=["web"],
        UserData=base64.b64encode(b"hello").decode(),  # as boto3 sends it
    )
    ids = [i["InstanceId"] for i in ran["Instances"]]

    def running() -> bool:  # sent after the request, in the background
        answer = ok("DescribeInstances", InstanceIds=ids)
        return all(i["State"]["Name"] == "running" for i in answer["Reservations"][0]["Instances"])

    wait_until(running, 10, "the instances to run")
    frontend.cloud.vmcontrol.poll()  # the stand-in reports them on nodes that answer
    ok("CreateTags", Resources=ids, Tags=[{"Key": "role", "Value": "web"}])
    assert len(ok("DescribeTags")["Tags"]) == 2
    ok("DeleteTags", Resources=ids[1:], Tags=[{"Key": "role"}])
    listed = ok("DescribeInstances", Filters=[{"Name": "tag:role", "Values": ["web"]}])
    assert [i["InstanceId"] for r in listed["Reservations"] for i in r["Instances"]] == ids[:1]
    assert [i["State"]["Name"] for i in listed["Reservations"][0]["Instances"]] == ["running"]
    statuses = ok("DescribeInstanceStatus", InstanceIds=ids)["InstanceStatuses"]
    assert [s["InstanceStatus"]["Status"] for s in statuses] == ["ok", "ok"]
    attribute = ok("DescribeInstanceAttribute", InstanceId=ids[0], Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]) == b"hello"
    public_ip = ok("AllocateAddress")["PublicIp"]
    assert public_ip == "192.0.2.9"  # the pool's first host address
    ok("AssociateAddress", PublicIp=public_ip, InstanceId=ids[0])
    [address] = ok("DescribeAddresses")["Addresses"]
    assert (address["InstanceId"], address["PrivateIpAddress"]) == (ids[0], "172.31.0.2")
    ok("DisassociateAddress", PublicIp=public_ip)
    ok("ReleaseAddress", PublicIp=public_ip)
    ok("RebootInstances", InstanceIds=ids)
    console = ok("GetConsoleOutput", InstanceId=ids[0])["Output"]
    assert base64.b64decode(console) == b"MALLEE-BOOT-OK\n"  # EC2's base64
    status, refused = call(frontend, alice, "DeleteSecurityGroup", GroupName="web")
    assert (status, refused["Error"]["Code"]) == (400, "DependencyViolation")  # in use
    ending = ok("TerminateInstances", InstanceIds=ids)["TerminatingInstances"]
    assert [e["CurrentState"]["Name"] for e in ending] == ["shutting-down"] * 2

    ok("DeleteKeyPair", KeyName="made")
    ok("DeregisterImage", ImageId=emi, caller=root)

    def ended() -> bool:  # the terminate reaches the CC in the background; a poll sees it
        frontend.cloud.vmcontrol.poll()
        answer = ok("DescribeInstances", InstanceIds=ids)["Reservations"][0]["Instances"]
        return all(i["State"]["Name"] == "terminated" for i in answer)

    wait_until(ended, 10, "the instances to end")
    ok("DeleteSecurityGroup", GroupName="web")
    assert called == set(ACTIONS), f"not called: {sorted(set(ACTIONS) - called)}"


def test_a_listing_shows_each_change_of_an_instance_at_once(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    """An unchanged instance's description is written once and reused; whatever changes
    it (its state, its tags, its address) shows in the very next listing."""
    frontend, alice, root, location = cloud

    ok = asking(frontend, alice)

    emi = public_image(ok, root, location)
    [instance] = ok("RunInstances", ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
    instance_id = instance["InstanceId"]

    def described() -> dict[str, Any]:  # each after one that listed it as it was
        [reservation] = ok("DescribeInstances")["Reservations"]
        [found] = reservation["Instances"]
        return dict(found)

    wait_until(lambda: described()["State"]["Name"] == "running", 10, "the instance to run")
    assert described().get("Tags", []) == [] and "PublicIpAddress" not in described()
    ok("CreateTags", Resources=[instance_id], Tags=[{"Key": "role", "Value": "web"}])
    assert described()["Tags"] == [{"Key": "role", "Value": "web"}]
    ok("CreateTags", Resources=[instance_id], Tags=[{"Key": "role", "Value": "db"}])
    assert described()["Tags"] == [{"Key": "role", "Value": "db"}]
    ok("DeleteTags", Resources=[instance_id])
    assert described().get("Tags", []) == []
    public_ip = ok("AllocateAddress")["PublicIp"]
    ok("AssociateAddress", PublicIp=public_ip, InstanceId=instance_id)
    assert described()["PublicIpAddress"] == public_ip
    ok("DisassociateAddress", PublicIp=public_ip)
    assert "PublicIpAddress" not in described()
    ok("TerminateInstances", InstanceIds=[instance_id])
    assert described()["State"]["Name"] in ("shutting-down", "terminated")

    def ended() -> bool:  # the terminate reaches the CC in the background; a poll sees it
        frontend.cloud.vmcontrol.poll()
        return described()["State"]["Name"] == "terminated"

    wait_until(ended, 10, "the instance to end")
    assert "PrivateIpAddress" not in described()  # an ended instance holds no address


def test_the_cluster_holds_the_groups_of_live_instances_as_the_records_say(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    """A group goes to the CC with its first instance (with it as a member), a rule
    change is there when its call answers, a group a rule names goes too (its members
    are the rule's peers), and all go once their instances ended."""
    frontend, alice, root, location = cloud
    cc = frontend.cloud.vmcontrol.cc_client("https://cc.invalid")
    assert isinstance(cc, StandInCc)

    ok = asking(frontend, alice)

    emi = public_image(ok, root, location)
    web = ok("CreateSecurityGroup", GroupName="web", Description="web")["GroupId"]
    ssh: dict[str, Any] = {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "CidrIp": "10.0.0.0/8",
    }
    ok("AuthorizeSecurityGroupIngress", GroupId=web, **ssh)
    assert cc.groups == {}  # no instance is in it yet
    [instance] = ok("RunInstances", ImageId=emi, MinCount=1, MaxCount=1, SecurityGroupIds=[web])[
        "Instances"
    ]
    wait_until(lambda: instance["InstanceId"] in cc.states, 10, "the instance to be sent")
    everyone = Rule("-1", -1, -1, cidr="0.0.0.0/0")
    assert cc.groups == {
        web: SecurityGroup(
            web,
            members=(instance["PrivateIpAddress"],),
            ingress=(Rule("tcp", 22, 22, cidr="10.0.0.0/8"),),
            egress=(everyone,),
        )
    }

    [default] = ok("DescribeSecurityGroups", GroupNames=["default"])["SecurityGroups"]
    ok("AuthorizeSecurityGroupIngress", GroupId=web, SourceSecurityGroupName="default")
    assert {r.group_id for r in cc.groups[web].ingress} == {"", default["GroupId"]}
    assert cc.groups[default["GroupId"]].members == ()  # named by a rule, no member yet
    ok("RevokeSecurityGroupIngress", GroupId=web, **ssh)
    assert Rule("tcp", 22, 22, cidr="10.0.0.0/8") not in cc.groups[web].ingress

    ok("TerminateInstances", InstanceIds=[instance["InstanceId"]])

    def left() -> bool:  # the terminate reaches the CC in the background; a poll sees it
        frontend.cloud.vmcontrol.poll()
        return not cc.groups

    wait_until(left, 10, "the groups to leave the cluster")


def test_an_image_file_stays_while_an_image_names_it(tmp_path: Path) -> None:
    store = images.ImageStore(tmp_path / "store")
    source = tmp_path / "disk.qcow2"
    source.write_bytes(b"QFI\xfb" + bytes(100))
    stored = store.add(source)
    assert stored.disk_format == "qcow2" and stored.size == 104
    assert store.add(source) == stored  # kept once
    assert store.path_of(stored.digest) is not None
    assert store.path_of("sha256:../../etc/passwd") is None


def test_listings_come_in_pages(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    frontend, alice, _, _ = cloud
    for n in range(6):
        call(frontend, alice, "CreateSecurityGroup", GroupName=f"g{n}", Description="paged")
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        extra: dict[str, Any] = {"NextToken": token} if token else {}
        status, page = call(frontend, alice, "DescribeSecurityGroups", MaxResults=5, **extra)
        assert status == 200 and len(page["SecurityGroups"]) <= 5
        seen += [g["GroupName"] for g in page["SecurityGroups"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert pages == 2 and sorted(seen) == sorted(["default", *(f"g{n}" for n in range(6))])
    status, refused = call(frontend, alice, "DescribeTags", NextToken="not-a-token")
    assert (status, refused["Error"]["Code"]) == (400, "InvalidParameterValue")
    status, refused = call(frontend, alice, "DescribeInstances", MaxResults=4)
    assert (status, refused["Error"]["Code"]) == (400, "InvalidParameterValue")  # 5 to 1000


def test_another_user_neither_sees_nor_uses_what_is_not_theirs(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    frontend, alice, root, location = cloud
    with frontend.sessions.write.begin() as session:
        bob = users.create_user(session, "bob")

    def ok(caller: users.Credentials, action: str, **params: Any) -> dict[str, Any]:
        status, answer = call(frontend, caller, action, **params)
        assert status == 200, answer
        return answer

    def refused(caller: users.Credentials, action: str, **params: Any) -> str:
        status, answer = call(frontend, caller, action, **params)
        assert status == 400, answer
        return str(answer["Error"]["Code"])

    private = ok(root, "RegisterImage", Name="root's own", ImageLocation=location)["ImageId"]
    public = ok(root, "RegisterImage", Name="for all", ImageLocation=location)["ImageId"]
    ok(root, "ModifyImageAttribute", ImageId=public, LaunchPermission={"Add": [{"Group": "all"}]})
    ok(alice, "CreateKeyPair", KeyName="alices")
    group = ok(alice, "CreateSecurityGroup", GroupName="alices", Description="x")["GroupId"]
    [instance] = ok(
        alice,
        "RunInstances",
        ImageId=public,
        MinCount=1,
        MaxCount=1,
        KeyName="alices",
        SecurityGroupIds=[group],
    )["Instances"]
    alices = instance["InstanceId"]
    ok(alice, "AllocateAddress")

    assert ok(bob, "DescribeInstances")["Reservations"] == []
    assert refused(bob, "DescribeInstances", InstanceIds=[alices]) == "InvalidInstanceID.NotFound"
    assert refused(bob, "TerminateInstances", InstanceIds=[alices]) == "InvalidInstanceID.NotFound"
    assert refused(bob, "RebootInstances", InstanceIds=[alices]) == "InvalidInstanceID.NotFound"
    assert refused(bob, "GetConsoleOutput", InstanceId=alices) == "InvalidInstanceID.NotFound"
    assert refused(bob, "CreateTags", Resources=[alices], Tags=[{"Key": "k", "Value": "v"}]) == (
        "InvalidInstanceID.NotFound"
    )
    assert ok(bob, "DescribeAddresses")["Addresses"] == []
    [address] = ok(alice, "DescribeAddresses")["Addresses"]
    assert refused(bob, "AssociateAddress", PublicIp=address["PublicIp"], InstanceId=alices) == (
        "InvalidAddress.NotFound"
    )
    assert refused(bob, "ReleaseAddress", PublicIp=address["PublicIp"]) == "InvalidAddress.NotFound"
    # bob's launches may name only his own keys and groups, and visible images
    launch = {"ImageId": public, "MinCount": 1, "MaxCount": 1}
    assert refused(bob, "RunInstances", **launch, KeyName="alices") == "InvalidKeyPair.NotFound"
    assert refused(bob, "RunInstances", **launch, SecurityGroupIds=[group]) == (
        "InvalidGroup.NotFound"
    )
    assert refused(bob, "RunInstances", **{**launch, "ImageId": private}) == (
        "InvalidAMIID.NotFound"
    )
    assert [i["ImageId"] for i in ok(bob, "DescribeImages")["Images"]] == [public]
    assert refused(bob, "DescribeImages", ImageIds=[private]) == "InvalidAMIID.NotFound"
    assert refused(bob, "DeregisterImage", ImageId=private) == "InvalidAMIID.NotFound"
    # and the admin sees everyone's
    assert [
        i["InstanceId"]
        for r in ok(root, "DescribeInstances")["Reservations"]
        for i in r["Instances"]
    ] == [alices]


def test_the_cluster_translates_the_elastic_addresses_of_its_live_instances(
    cloud: tuple[Ec2Frontend, users.Credentials, users.Credentials, str],
) -> None:
    """An association is on the CC when its call answers, and gone from it when the
    address is disassociated or its instance ended; a CC that cannot translate refuses,
    and the association is undone and the caller told."""
    frontend, alice, root, location = cloud
    cc = frontend.cloud.vmcontrol.cc_client("https://cc.invalid")
    assert isinstance(cc, StandInCc)

    ok = asking(frontend, alice)

    emi = public_image(ok, root, location)
    [instance] = ok("RunInstances", ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
    instance_id = instance["InstanceId"]
    public_ip = ok("AllocateAddress")["PublicIp"]
    ok("AssociateAddress", PublicIp=public_ip, InstanceId=instance_id)
    assert cc.elastic == {public_ip: instance_id}
    ok("DisassociateAddress", PublicIp=public_ip)
    assert cc.elastic == {}

    cc.routes_public_traffic = False
    status, refused = call(frontend, alice, "AssociateAddress", PublicIp=public_ip,
                           InstanceId=instance_id)  # fmt: skip
    assert (status, refused["Error"]["Code"]) == (400, "UnsupportedOperation")
    assert "public_mode is system" in refused["Error"]["Message"]
    [address] = ok("DescribeAddresses")["Addresses"]
    assert "InstanceId" not in address  # undone

    cc.routes_public_traffic = True
    ok("AssociateAddress", PublicIp=public_ip, InstanceId=instance_id)
    ok("TerminateInstances", InstanceIds=[instance_id])

    def left() -> bool:  # the terminate reaches the CC in the background; a poll sees it
        frontend.cloud.vmcontrol.poll()
        return not cc.elastic

    wait_until(left, 10, "the address to leave the cluster")


def test_each_groups_instances_get_a_vlan_and_addresses_of_its_slice(tmp_path: Path) -> None:
    """With an overlay, a group's first instance takes the lowest free VLAN, and every
    instance of the group an address of that VLAN's slice, on a private NIC of its own;
    when no VLAN is left, RunInstances says so and records nothing; a VLAN whose group
    has no instance left goes to the next group that needs one."""
    frontend, alice, root, location = make_cloud(
        tmp_path, private_subnet="10.200.0.0/22", private_slice_prefix=24
    )  # slices 1 to 3: 10.200.1.0/24 to 10.200.3.0/24
    cc = frontend.cloud.vmcontrol.cc_client("https://cc.invalid")
    assert isinstance(cc, StandInCc)
    ok = asking(frontend, alice)
    emi = public_image(ok, root, location)
    group_ids = {
        name: ok("CreateSecurityGroup", GroupName=name, Description=name)["GroupId"]
        for name in ("web", "db", "app")
    }

    launched: dict[str, str] = {}  # address → instance id

    def run(group: str, count: int = 1) -> list[str]:
        ran = ok("RunInstances", ImageId=emi, MinCount=count, MaxCount=count,
                 SecurityGroups=[group])  # fmt: skip
        launched.update({i["PrivateIpAddress"]: i["InstanceId"] for i in ran["Instances"]})
        return [i["PrivateIpAddress"] for i in ran["Instances"]]

    assert run("web", 2) == ["10.200.1.2", "10.200.1.3"]  # .1: the VLAN's router
    assert run("db") == ["10.200.2.2"]
    assert run("web") == ["10.200.1.4"]
    assert run("default") == ["10.200.3.2"]
    status, refused = call(frontend, alice, "RunInstances", ImageId=emi, MinCount=1,
                           MaxCount=1, SecurityGroups=["app"])  # fmt: skip
    assert (status, refused["Error"]["Code"]) == (400, "SubnetLimitExceeded")
    assert "10.200.0.0/22 cut into /24 slices has 3" in refused["Error"]["Message"]
    assert len(ok("DescribeInstances")["Reservations"]) == 4  # the refused one: none

    wait_until(lambda: len(cc.nets) == 5, 10, "the instances to be sent")
    by_address = {n["private_ip"]: n for n in cc.nets.values()}
    assert by_address["10.200.2.2"] == {
        "public_mac": "d0:0e:0a:c8:02:02",
        "private_mac": "d0:0d:0a:c8:02:02",
        "private_ip": "10.200.2.2",
        "vlan": 2,
        "security_groups": [group_ids["db"]],
    }

    ok("TerminateInstances", InstanceIds=[launched["10.200.2.2"]])

    def ended() -> bool:  # the terminate reaches the CC in the background; a poll sees it
        frontend.cloud.vmcontrol.poll()
        [r] = ok("DescribeInstances", InstanceIds=[launched["10.200.2.2"]])["Reservations"]
        return bool(r["Instances"][0]["State"]["Name"] == "terminated")

    wait_until(ended, 10, "db's instance to end")
    assert run("app") == ["10.200.2.2"]  # db's VLAN, free now
