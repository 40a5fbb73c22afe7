"""Real TCG guests of the tiny image on the private overlay: two worker hosts (network
namespaces), each with its own libvirtd and `mallee-nc`, the CC and CLC on the test's
own namespace, over each backend. The guests take their private addresses from the
CC's DHCP across the overlay, reach the CLC's metadata service through the VLAN's
router, and reach each other; an NC killed with its guest running and started again
leaves the guest as it was, reachable."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import node_of, peered_ccs, register
from tests.support.daemons import (
    TEST_BED_HERE,
    CcDaemon,
    ClcDaemon,
    NcDaemon,
    PrivateLibvirtd,
    free_port,
    pids_of,
)
from tests.support.guest import GuestImage, GuestShell, booted_console, wait_until
from tests.support.hosts import namespaces, ns, underlay

SUBNET = "10.200.0.0/16"
WAIT = {"Delay": 2, "MaxAttempts": 120}


@pytest.fixture
def workers() -> Iterator[dict[str, str]]:
    with namespaces("w1", "w2"), underlay("w1", "w2") as address:
        yield address


def guest_workers(
    workers: dict[str, str],
    backend: str,
    libvirtd_in: Callable[[str], PrivateLibvirtd],
    nc_factory: Callable[..., NcDaemon],
) -> tuple[dict[str, PrivateLibvirtd], dict[str, NcDaemon]]:
    """On each of ``workers`` (name → address) a libvirtd of its own and an NC on the
    ``backend`` overlay, each by worker; public NICs on QEMU's own network (not what
    these tests are about)."""
    libvirtds = {w: libvirtd_in(ns(w)) for w in workers}
    ncs = {
        w: nc_factory(
            libvirt_uri=libvirtds[w].uri,
            netns=ns(w),
            address=address,
            public_bridge="user",
            overlay=backend,
            overlay_address=address,
        )
        for w, address in workers.items()
    }
    return libvirtds, ncs


def read(shell: GuestShell, command: str, line: str) -> str:
    """What ``command`` printed in the guest: its one output line matching ``line``
    (the console also echoes what was typed)."""
    _, said = shell.run(command)
    [found] = re.findall(rf"^({line})\r?$", said, re.MULTILINE)
    return str(found)


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
    libvirtds, ncs = guest_workers(workers, backend, libvirtd_in, nc_factory)
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
        output = booted_console(alice, instance_id)
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


def test_users_are_apart_on_one_worker_and_a_guest_that_spoofs_reaches_no_one(
    workers: dict[str, str],
    libvirtd_in: Callable[[str], PrivateLibvirtd],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> None:
    """Alice's two guests on two workers, bob's beside the first: bob's reaches neither
    of alice's and receives not one frame of theirs (his NIC's own counters); alice's
    guest, once it takes another address or another MAC, reaches her other guest no
    more, and does again with its own."""
    libvirtds, ncs = guest_workers(workers, "vxlan", libvirtd_in, nc_factory)
    worker_of = {nc.name: w for w, nc in ncs.items()}
    cc = cc_factory(
        scheduler="round-robin",
        overlay="vxlan",
        overlay_address=TEST_BED_HERE,
        private_subnet=SUBNET,
    )
    register(cc, *ncs.values())
    clc = clc_factory(
        address=TEST_BED_HERE, private_slice_prefix=24, instance_quota=0, private_subnet=SUBNET
    )
    clc.admin("cluster", "add", "zone-a", cc.url)
    emi = clc.add_image("ttylinux", guest.directory)
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    ids = [
        r["InstanceId"]
        for r in alice.run_instances(ImageId=emi, MinCount=2, MaxCount=2)["Instances"]
    ]
    [bobs] = [
        r["InstanceId"] for r in bob.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
    ]
    for ec2, mine in ((alice, ids), (bob, [bobs])):
        ec2.get_waiter("instance_running").wait(InstanceIds=mine, WaiterConfig=WAIT)
        for instance_id in mine:
            booted_console(ec2, instance_id)
    described = {
        i["InstanceId"]: i
        for ec2, mine in ((alice, ids), (bob, [bobs]))
        for r in ec2.describe_instances(InstanceIds=mine)["Reservations"]
        for i in r["Instances"]
    }
    on = {i: worker_of[node_of(cc, i)] for i in described}
    first, second = sorted(ids, key=lambda i: on[i])  # on w1, on w2
    assert (on[first], on[second], on[bobs]) == ("w1", "w2", "w1")
    address = {i: d["PrivateIpAddress"] for i, d in described.items()}

    alices = GuestShell(libvirtds["w1"].uri, first)
    bobs_shell = GuestShell(libvirtds["w1"].uri, bobs)
    try:
        assert reaches(alices, address[second])
        bobs_shell.run("ip route add 10.200.0.0/16 dev eth1")  # ask for alice's by ARP
        assert not reaches(bobs_shell, address[first])  # beside him
        assert not reaches(bobs_shell, address[second])

        def received() -> int:
            return int(read(bobs_shell, "cat /sys/class/net/eth1/statistics/rx_packets", r"\d+"))

        before = received()
        assert alices.run(f"ping -c 5 -i 0.2 {address[second]}")[0] == 0
        assert alices.run(f"arping -c 2 -I eth1 {address[second]}")[0] == 0  # broadcast
        assert received() == before  # not one of her frames reached him

        own = f"{address[first]}/24"
        other = address[first].rsplit(".", 1)[0] + ".200"  # in her slice, not hers
        alices.run(f"ip addr flush dev eth1 && ip addr add {other}/24 dev eth1")
        assert not reaches(alices, address[second])
        alices.run(f"ip addr flush dev eth1 && ip addr add {own} dev eth1")
        assert reaches(alices, address[second])

        mac = read(alices, "cat /sys/class/net/eth1/address", r"[0-9a-f:]{17}")
        alices.run("ip link set eth1 address d0:0d:00:00:00:99")
        assert not reaches(alices, address[second])
        alices.run(f"ip link set eth1 address {mac}")
        assert reaches(alices, address[second])
    finally:
        alices.close()
        bobs_shell.close()


@pytest.mark.parametrize("backend", ["vxlan", "vde"])
def test_guests_in_two_clusters_with_the_same_worker_addresses_reach_each_other(
    backend: str,
    two_clusters: tuple[str, str],
    libvirtd_in: Callable[[str], PrivateLibvirtd],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
) -> None:
    """Seed Figure 2 with real guests: a worker in each cluster, both at 10.99.0.2,
    ``backend`` inside each cluster and VXLAN between the head nodes; alice's guest in
    each zone takes its address from its own CC and reaches the other. Each asks the
    metadata service: zone-a's CC, on the CLC's host, redirects to it; zone-b's, on
    another host, asks it through its metadata proxy, vouching for the guest."""
    here, there = two_clusters
    worker = "10.99.0.2"
    workers = {"w1": worker, "w3": worker}
    libvirtds, ncs = guest_workers(workers, backend, libvirtd_in, nc_factory)
    metadata_port, secret = free_port(), "shared by the CLC and zone-b's CC"
    overlay = {
        "overlay": backend,
        "overlay_address": TEST_BED_HERE,
        "private_subnet": SUBNET,
        "metadata_address": f"{here}:{metadata_port}",  # the CLC's, on zone-a's head
    }
    proxy = {"metadata_proxy_port": free_port(), "metadata_proxy_secret": secret}
    ccs = peered_ccs(cc_factory, (here, there), overlay, proxy)
    register(ccs["zone-a"], ncs["w1"])
    register(ccs["zone-b"], ncs["w3"])
    clc = clc_factory(
        address=here,
        private_slice_prefix=24,
        instance_quota=0,
        private_subnet=SUBNET,
        metadata_port=metadata_port,
        metadata_proxy_secret=secret,
    )
    for zone, cc in ccs.items():
        clc.admin("cluster", "add", zone, cc.url)
    emi = clc.add_image("ttylinux", guest.directory)
    alice = clc.ec2("alice")
    placed = {
        zone: alice.run_instances(
            ImageId=emi, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
        )["Instances"][0]["InstanceId"]
        for zone in ccs
    }
    ids = list(placed.values())
    alice.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=WAIT)
    address = {
        i["InstanceId"]: i["PrivateIpAddress"]
        for r in alice.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    }
    for instance_id in ids:
        output = booted_console(alice, instance_id)
        assert f"mallee-guest: ip eth1 {address[instance_id]}" in output, output
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output

    shell = GuestShell(libvirtds["w1"].uri, placed["zone-a"])
    try:
        assert reaches(shell, address[placed["zone-b"]])
        assert "mtu 1450" in shell.run("ip link show eth1")[1]  # the way between clusters'
    finally:
        shell.close()
