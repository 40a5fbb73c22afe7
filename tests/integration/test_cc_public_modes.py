"""Public modes MANAGED and STATIC with a tiny guest run by the whole cloud: the CC's
dnsmasq gives the guest's public NIC its address, the guest reaches the CLC's metadata
service through the CC's redirect (the CLC knows it by that address), and the address
describe-instances reports is the lease. A dnsmasq that dies is started again, one a
killed CC left is replaced by its restart, and everything goes with the instance and
with the CC's orderly stop."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mallee.common.rpc import RemoteError
from tests.support.cluster import SMALL, blank_image, counts, fake_node, iid, register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon, free_port
from tests.support.guest import GuestImage, GuestShell, booted_console, wait_until
from tests.support.network import (
    PublicLan,
    connect,
    echoes,
    hanging_up,
    nft_tables,
    public_lan,
)

WAIT = {"Delay": 2, "MaxAttempts": 120}
ECHO_PORT, OUT_PORT = 8080, 9000


def pool(lan: PublicLan) -> dict[str, Any]:
    return {"public_pool": f"{lan.address(10)}-{lan.address(19)}"}


def table(lan: PublicLan) -> dict[str, Any]:
    return {"public_table": [f"d0:0d:c6:12:00:{n:02x}={lan.address(n)}" for n in (30, 31)]}


MODES: dict[str, Callable[[PublicLan], dict[str, Any]]] = {"managed": pool, "static": table}


def leases(cc: CcDaemon) -> dict[str, str]:
    """MAC → address, as the CC's dnsmasq's lease file says."""
    path = Path(cc.state_dir) / "dhcp" / "leases"
    return {f[1]: f[2] for f in (line.split() for line in path.read_text().splitlines())}


class Cloud(NamedTuple):
    cc: CcDaemon
    clc: ClcDaemon
    emi: str


@pytest.fixture
def cloud_on(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> Callable[[PublicLan, str], Cloud]:
    """A whole cloud whose one zone's CC serves ``lan`` in public mode ``mode``, with
    one NC, the tiny guest registered, and elastic addresses of 203.0.113.32/29."""

    def make(lan: PublicLan, mode: str) -> Cloud:
        metadata_port = free_port()
        cc = cc_factory(
            public_mode=mode,
            public_interface=lan.bridge,
            metadata_address=f"{lan.router}:{metadata_port}",
            **MODES[mode](lan),
        )
        register(cc, nc_factory(public_bridge=lan.bridge))
        clc = clc_factory(
            listen="0.0.0.0",
            metadata_port=metadata_port,
            private_subnet="10.78.0.0/24",
            instance_quota=0,
            public_addresses=["203.0.113.32/29"],
        )
        clc.admin("cluster", "add", "zone-a", cc.url)
        return Cloud(cc, clc, clc.add_image("ttylinux", guest.directory))

    return make


def booted(ec2: Any, emi: str) -> tuple[str, str]:
    """A new instance of the tiny guest, once booted: its id and its console."""
    [ran] = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
    instance_id = ran["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
    return instance_id, booted_console(ec2, instance_id, 240)


def described(ec2: Any, instance_id: str) -> dict[str, Any]:
    [instance] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    return dict(instance)


@pytest.mark.parametrize("mode", MODES)
def test_the_clusters_dhcp_gives_the_address_describe_reports(
    mode: str, cloud_on: Callable[[PublicLan, str], Cloud]
) -> None:
    with public_lan() as lan:
        cc, clc, emi = cloud_on(lan, mode)
        ec2 = clc.ec2("alice")
        instance_id, output = booted(ec2, emi)
        instance = described(ec2, instance_id)
        public_ip = instance["PublicIpAddress"]
        assert f"mallee-guest: ip eth0 {public_ip}" in output, output
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output
        [(mac, leased)] = leases(cc).items()
        assert leased == public_ip
        if mode == "managed":
            assert public_ip == lan.address(10)  # the pool's first
            assert instance["PrivateIpAddress"] == "10.78.0.2"
        else:
            assert (mac, public_ip) == ("d0:0d:c6:12:00:1e", lan.address(30))  # the table's

        # dnsmasq killed: the CC's next poll starts it again, serving the same lease
        [first] = cc.dnsmasq()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(cc.dnsmasq()) == 1 and cc.dnsmasq() != [first], 15, "a new one")

        # the CC killed: its dnsmasq serves on; the restart ends it and starts its own
        cc.kill9()
        [orphan] = cc.dnsmasq()
        cc.start()
        [serving] = cc.dnsmasq()
        assert serving != orphan and leases(cc) == {mac: public_ip}
        assert f"ip mallee_cc_{lan.bridge}" in nft_tables()

        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
        wait_until(lambda: leases(cc) == {}, 15, "the lease to end with its instance")
        hosts = Path(cc.state_dir) / "dhcp" / "hosts"
        assert hosts.read_text() == ""

        cc.stop()
        assert cc.dnsmasq() == []
        assert f"ip mallee_cc_{lan.bridge}" not in nft_tables()


def test_an_elastic_address_reaches_its_instance_until_disassociated(
    cloud_on: Callable[[PublicLan, str], Cloud], libvirtd: str
) -> None:
    """In from elsewhere to the elastic address, out from it; effective when the call
    answers, open flows cut at disassociate; the CC killed and restarted meanwhile."""
    with public_lan() as lan:
        cc, clc, emi = cloud_on(lan, "managed")
        ec2 = clc.ec2("alice")
        ec2.authorize_security_group_ingress(
            GroupName="default", IpProtocol="tcp", FromPort=ECHO_PORT, ToPort=ECHO_PORT,
            CidrIp="0.0.0.0/0",
        )  # fmt: skip
        instance_id, _ = booted(ec2, emi)
        shell = GuestShell(libvirtd, instance_id)
        assert shell.run(f"nc -ll -p {ECHO_PORT} -e cat &")[0] == 0
        elastic_ip = ec2.allocate_address()["PublicIp"]
        assert connect(lan.outside, elastic_ip, ECHO_PORT) is None  # not associated yet

        ec2.associate_address(PublicIp=elastic_ip, InstanceId=instance_id)
        connection = connect(lan.outside, elastic_ip, ECHO_PORT)
        assert connection is not None and echoes(connection)
        assert described(ec2, instance_id)["PublicIpAddress"] == elastic_ip
        metadata = "wget -qO- http://169.254.169.254/latest/meta-data/public-ipv4; echo"
        assert elastic_ip in shell.run(metadata)[1].splitlines()  # what the instance is told
        with hanging_up(lan.outside, OUT_PORT) as peers:
            assert shell.run(f"nc -w 2 {lan.outside_ip} {OUT_PORT} < /dev/null")[0] == 0
            assert peers == [elastic_ip]  # out from the elastic address

        cc.kill9()  # the translation holds while the CC is away, and after its restart
        assert echoes(connection)
        cc.start()
        assert echoes(connection)

        ec2.disassociate_address(PublicIp=elastic_ip)
        assert not echoes(connection)  # cut
        assert connect(lan.outside, elastic_ip, ECHO_PORT) is None
        assert described(ec2, instance_id)["PublicIpAddress"] == lan.address(10)
        shell.close()


def test_an_exhausted_pool_refuses_the_whole_batch_and_holds_nothing(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], tmp_path: Path
) -> None:
    with public_lan() as lan, blank_image(tmp_path / "www") as (_, image):
        cc = cc_factory(
            public_mode="managed",
            public_interface=lan.bridge,
            public_pool=f"{lan.address(10)}-{lan.address(10)}",
        )
        register(cc, fake_node(nc_factory, 4, public_bridge=lan.bridge))
        hosts = Path(cc.state_dir) / "dhcp" / "hosts"

        def run(*numbers: int) -> list[dict[str, Any]]:
            body = {
                "reservation_id": "r-0123456789abcdef0",
                "owner_id": "alice",
                "vm_type": SMALL,
                "image": image,
                "instances": [
                    {"instance_id": iid(n), "net": {"public_mac": f"d0:0d:0a:4e:00:{n:02x}"}}
                    for n in numbers
                ],
            }
            return list(cc.client.call("POST", "/v1/instances", body)["instances"])

        with pytest.raises(RemoteError) as refused:
            run(1, 2)
        assert (refused.value.status, refused.value.code) == (409, "InsufficientAddressCapacity")
        assert "public_pool has 1 free of 1" in refused.value.message
        assert counts(cc, SMALL) == {"t1.small": (4, 4)}  # no room held either
        assert hosts.read_text() == ""

        [instance] = run(3)
        assert instance["public_ip"] == lan.address(10)
        assert hosts.read_text() == f"d0:0d:0a:4e:00:03,{lan.address(10)}\n"
        cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(3)]})
        wait_until(lambda: hosts.read_text() == "", 15, "the address to be given back")
        [again] = run(4)
        assert again["public_ip"] == lan.address(10)


def test_a_public_interface_the_host_lacks_stops_the_cc_at_start(
    cc_factory: Callable[..., CcDaemon],
) -> None:
    with pytest.raises(RuntimeError, match="this host has no interface 'mallee-none'"):
        cc_factory(public_mode="static", public_interface="mallee-none")
