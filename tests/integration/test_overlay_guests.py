"""Real TCG guests of the tiny image on the private overlay: two worker hosts (network
namespaces), each with its own libvirtd and `mallee-nc`, the CC and CLC on the test's
own namespace, over each backend. The guests take their private addresses from the
CC's DHCP across the overlay, reach the CLC's metadata service through the VLAN's
router, and reach each other; an NC killed with its guest running and started again
leaves the guest as it was, reachable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.cluster import node_of, register
from tests.support.daemons import (
    TEST_BED_HERE,
    CcDaemon,
    ClcDaemon,
    NcDaemon,
    PrivateLibvirtd,
    free_port,
    pids_of,
)
from tests.support.guest import MARKER, GuestImage, GuestShell, wait_until
from tests.support.hosts import namespaces, ns, underlay

SUBNET = "10.200.0.0/16"
WAIT = {"Delay": 2, "MaxAttempts": 120}


@pytest.fixture
def workers() -> Iterator[dict[str, str]]:
    with namespaces("w1", "w2"), underlay("w1", "w2") as address:
        yield address


def console(ec2: Any, instance_id: str) -> str:
    """The guest's console once it booted (the marker printed)."""
    output = ""

    def booted() -> bool:
        nonlocal output
        output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
        return MARKER in output

    wait_until(booted, 300, f"{MARKER} on the console of {instance_id}")
    return output


def reaches(shell: GuestShell, address: str) -> bool:
    status, _ = shell.run(f"ping -c 1 -W 2 {address}")
    return status == 0


@pytest.mark.parametrize("backend", ["vxlan", "vde"])
def test_guests_on_two_workers_reach_each_other_and_an_nc_restart_keeps_it_so(
    backend: str,
    workers: dict[str, str],
    libvirtd_in: Callable[[str], PrivateLibvirtd],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> None:
    libvirtds = {w: libvirtd_in(ns(w)) for w in workers}
    ncs = {
        w: nc_factory(
            libvirt_uri=libvirtds[w].uri,
            netns=ns(w),
            address=address,
            public_bridge="user",  # the public NIC on QEMU's own network: not tested here
            overlay=backend,
            overlay_address=address,
        )
        for w, address in workers.items()
    }
    worker_of = {nc.name: w for w, nc in ncs.items()}
    metadata_port = free_port()
    cc = cc_factory(
        scheduler="round-robin",
        overlay=backend,
        overlay_address=TEST_BED_HERE,
        private_subnet=SUBNET,
        metadata_address=f"{TEST_BED_HERE}:{metadata_port}",
    )
    register(cc, *ncs.values())
    clc = clc_factory(
        address=TEST_BED_HERE,
        private_slice_prefix=24,
        instance_quota=0,
        private_subnet=SUBNET,
        metadata_port=metadata_port,
    )
    clc.admin("cluster", "add", "zone-a", cc.url)
    emi = clc.add_image("ttylinux", guest.directory)
    alice = clc.ec2("alice")
    alice.create_key_pair(KeyName="mine")
    ran = alice.run_instances(
        ImageId=emi, MinCount=2, MaxCount=2, KeyName="mine", UserData="echo hello"
    )["Instances"]
    ids = [r["InstanceId"] for r in ran]
    alice.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=WAIT)
    [reservation] = alice.describe_instances(InstanceIds=ids)["Reservations"]
    address = {i["InstanceId"]: i["PrivateIpAddress"] for i in reservation["Instances"]}
    on = {i: worker_of[node_of(cc, i)] for i in ids}
    assert sorted(on.values()) == ["w1", "w2"]  # one guest per worker
    for instance_id in ids:
        output = console(alice, instance_id)
        # the private NIC's address: the CC's DHCP, the CLC's choice
        assert f"mallee-guest: ip eth1 {address[instance_id]}" in output, output
        # the metadata service, through the VLAN's router (the CC): the CLC, knowing
        # the guest by its private address, answers with its own id, key and user-data
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output
        assert "mallee-guest: metadata ssh key installed" in output, output
        assert "mallee-guest: user-data 10 bytes" in output, output

    first, second = ids
    shell = GuestShell(libvirtds[on[first]].uri, first)
    try:
        assert reaches(shell, address[second])  # across the workers, guest to guest

        nc = ncs[on[first]]
        nc.kill9()
        if backend == "vxlan":  # in the kernel: it carries on without its NC
            assert reaches(shell, address[second])
        nc.start()
        wait_until(
            lambda: reaches(shell, address[second]),
            60,
            f"{first} to reach {second} again after its NC's restart",
        )
        if backend == "vde":  # the restarted NC's switch, and no other
            assert len(pids_of(f"vde_switch --sock {nc.instance_dir}/")) == 1
    finally:
        shell.close()
    states = alice.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in states} == {"running"}
