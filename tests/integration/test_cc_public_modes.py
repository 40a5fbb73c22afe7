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
from typing import Any

import pytest

from tests.support.cluster import register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon, free_port
from tests.support.guest import MARKER, GuestImage, wait_until
from tests.support.network import PublicLan, nft_tables, public_lan

WAIT = {"Delay": 2, "MaxAttempts": 120}


def pool(lan: PublicLan) -> dict[str, Any]:
    return {"public_pool": f"{lan.address(10)}-{lan.address(19)}"}


def table(lan: PublicLan) -> dict[str, Any]:
    return {"public_table": [f"d0:0d:c6:12:00:{n:02x}={lan.address(n)}" for n in (30, 31)]}


MODES: dict[str, Callable[[PublicLan], dict[str, Any]]] = {"managed": pool, "static": table}


def leases(cc: CcDaemon) -> dict[str, str]:
    """MAC → address, as the CC's dnsmasq's lease file says."""
    path = Path(cc.state_dir) / "dhcp" / "leases"
    return {f[1]: f[2] for f in (line.split() for line in path.read_text().splitlines())}


@pytest.mark.parametrize("mode", MODES)
def test_the_clusters_dhcp_gives_the_address_describe_reports(
    mode: str,
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> None:
    with public_lan() as lan:
        metadata_port = free_port()
        cc_settings = {
            "public_mode": mode,
            "public_interface": lan.bridge,
            "metadata_address": f"{lan.router}:{metadata_port}",
            **MODES[mode](lan),
        }
        cc = cc_factory(**cc_settings)
        nc = nc_factory(public_bridge=lan.bridge)
        register(cc, nc)
        clc = clc_factory(
            listen="0.0.0.0",
            metadata_port=metadata_port,
            private_subnet="10.78.0.0/24",
            instance_quota=0,
        )
        clc.admin("cluster", "add", "zone-a", cc.url)
        emi = clc.add_image("ttylinux", guest.directory)
        ec2 = clc.ec2("alice")

        [ran] = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
        instance_id = ran["InstanceId"]
        ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
        output = ""

        def booted() -> bool:
            nonlocal output
            output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
            return MARKER in output

        wait_until(booted, 240, f"{MARKER} on the console of {instance_id}")
        [described] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ]
        public_ip = described["PublicIpAddress"]
        assert f"mallee-guest: ip eth0 {public_ip}" in output, output
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output
        [(mac, leased)] = leases(cc).items()
        assert leased == public_ip
        if mode == "managed":
            assert public_ip == lan.address(10)  # the pool's first
            assert described["PrivateIpAddress"] == "10.78.0.2"
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
