"""The private overlay's control plane on real packets: two worker hosts (network
namespaces) each running a real `mallee-nc`, a real `mallee-cc` on the test's own
namespace reaching them over their LAN, VXLAN between all three. Instances run on
libvirt's test driver; namespaces behind veths named as the instances' taps, with their
MACs, stand in for their private NICs (TCG guests would need a libvirtd per host) and
ask the CC's DHCP for their addresses as a guest does."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mallee.clc.instances import mac_of
from mallee.common.vde import WIRE_TCP_PORT, VdeSwitch
from mallee.nc.service import VDE_FOLDER, tap_name
from tests.support.cluster import (
    SMALL,
    blank_image,
    fake_node,
    iid,
    node_of,
    peered_ccs,
    register,
)
from tests.support.daemons import TEST_BED_HERE, CcDaemon, ClcDaemon, NcDaemon, pids_of
from tests.support.guest import wait_until
from tests.support.hosts import (
    attach,
    namespaces,
    ns,
    pings,
    run_in,
    underlay,
    vxlan_device,
)
from tests.support.network import counting

# instance number → (its guest namespace, the worker it lands on, its VLAN)
GUESTS = {1: ("g1", "w1", 10), 2: ("g2", "w2", 10), 3: ("g3", "w1", 20)}
SUBNET = "10.200.0.0/16"  # VLAN N's slice: 10.200.N.0/24, its router 10.200.N.1


def private_net(n: int) -> dict[str, object]:
    vlan = GUESTS[n][2]
    return {
        "private_mac": f"d0:0d:0a:c8:00:{n:02x}",
        "private_ip": f"10.200.{vlan}.{n + 10}",
        "vlan": vlan,
    }


def dhcp_client(guest: str, workdir: Path) -> str:
    """Ask DHCP for ``guest``'s address as the tiny guest does (busybox udhcpc), and
    take it; what the answer said: "ADDRESS/PREFIX MTU", and "ROUTER" if it gave one
    (a private network gives none: the public NIC has the default route)."""
    script = workdir / "udhcpc.sh"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = bound ] || exit 0\n'
        'ip addr add "$ip/$mask" dev "$interface"\n'
        'ip link set "$interface" mtu "$mtu"\n'
        'echo "$ip/$mask $mtu${router:+ $router}"\n'
    )
    script.chmod(0o755)
    answer = run_in(
        guest,
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        str(script),
        timeout_s=30,  # a client NAKed again and again (a second server) would never end
    )
    return answer.strip().splitlines()[-1]


def workers_and_cc(
    backend: str,
    workers: dict[str, str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
) -> tuple[list[NcDaemon], CcDaemon]:
    """An NC on each worker and a round-robin CC here, all on the ``backend`` overlay."""
    ncs = [
        fake_node(
            nc_factory,
            2,
            netns=ns(w),
            address=address,
            overlay=backend,
            overlay_address=address,
        )
        for w, address in workers.items()
    ]
    cc = cc_factory(
        scheduler="round-robin",
        overlay=backend,
        overlay_address=TEST_BED_HERE,
        private_subnet=SUBNET,
    )
    register(cc, *ncs)
    return ncs, cc


def reserve(cc: CcDaemon, image: dict[str, str], n: int) -> list[dict[str, Any]]:
    """Instance ``n`` of GUESTS run through the CC, with its private NIC; the CC's views."""
    body = {
        "reservation_id": "r-0123456789abcdef0",
        "owner_id": "alice",
        "vm_type": SMALL,
        "image": image,
        "instances": [{"instance_id": iid(n), "net": private_net(n)}],
    }
    views: list[dict[str, Any]] = cc.client.call("POST", "/v1/instances", body)["instances"]
    return views


@pytest.fixture
def workers() -> Iterator[dict[str, str]]:
    with namespaces("w1", "w2", "g1", "g2", "g3"), underlay("w1", "w2") as address:
        yield address


def test_the_cc_joins_each_vlan_across_the_workers_that_carry_it(
    workers: dict[str, str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    tmp_path: Path,
) -> None:
    ncs, cc = workers_and_cc("vxlan", workers, nc_factory, cc_factory)
    with blank_image(tmp_path / "www", address="10.99.0.1") as (_, image):
        for n in GUESTS:  # round-robin: w1, w2, w1
            [view] = reserve(cc, image, n)
            assert view["node"] == ncs[int(GUESTS[n][1][1]) - 1].name

    # each instance's NIC, as libvirt plugs it into its VLAN's bridge; its address by DHCP
    for n, (guest, worker, vlan) in GUESTS.items():
        attach(
            guest,
            worker,
            f"mlvlan{vlan}",
            "",
            tap=tap_name(iid(n), "private"),
            mac=str(private_net(n)["private_mac"]),
        )
        answer = dhcp_client(guest, tmp_path)
        assert answer == f"{private_net(n)['private_ip']}/24 1450"  # no default route
    assert pings("g1", "10.200.10.1") and pings("g2", "10.200.10.1")  # the CC, on the VLAN
    assert pings("g1", "10.200.10.12", count=3)  # VLAN 10, across the workers
    run_in("g3", "ip", "route", "add", "10.200.10.0/24", "dev", "eth0")  # ask VLAN 20 by ARP
    assert not pings("g3", "10.200.10.12")  # VLAN 20: not across
    assert not pings("g3", "10.200.10.11")  # nor on its own worker

    flooding = run_in("w1", "bridge", "fdb", "show", "dev", vxlan_device(10))
    flood = "00:00:00:00:00:00 dst"
    assert f"{flood} {workers['w2']}" in flooding and f"{flood} 10.99.0.1" in flooding
    flooding = run_in("w1", "bridge", "fdb", "show", "dev", vxlan_device(20))
    assert f"{flood} {workers['w2']}" not in flooding  # VLAN 20: w1 and the CC only

    # The CC killed: the networks carry on; restarted, it tells the nodes again, and
    # they stay as they were; its DHCP answers again. (An NC's restart is not tried
    # here: libvirt's test driver forgets its domains with the process.)
    [before] = [p for p in cc.dnsmasq() if "/vlans/10/" in _cmdline(p)]
    cc.kill9()
    assert pings("g1", "10.200.10.12")
    # meanwhile w1 loses a flood entry: the restarted CC's full retelling restores it
    run_in(
        "w1",
        "bridge",
        "fdb",
        "del",
        "00:00:00:00:00:00",
        "dev",
        vxlan_device(10),
        "dst",
        workers["w2"],
    )
    cc.start()
    wait_until(
        lambda: len(cc.dnsmasq()) == 2 and before not in cc.dnsmasq(),
        15,
        "the restarted CC's dnsmasqs to replace the old ones",
    )

    def flooding_to_both() -> bool:
        flooding = run_in("w1", "bridge", "fdb", "show", "dev", vxlan_device(10))
        return flooding.count("00:00:00:00:00:00") == 2 and f"dst {workers['w2']}" in flooding

    wait_until(flooding_to_both, 15, "w1 to flood to w2 and the CC again, once each")
    assert pings("g1", "10.200.10.12") and pings("g1", "10.200.10.1")

    # The last instance of VLAN 20 ends: w1 and the CC take it down.
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(3)]})

    def left() -> bool:
        on_w1 = "mlvlan20" in run_in("w1", "ip", "-br", "link")
        here = Path("/sys/class/net/mlcc20").exists()
        return not on_w1 and not here and len(cc.dnsmasq()) == 1

    wait_until(left, 15, "VLAN 20 to leave w1 and the CC")

    # The last instance of VLAN 10 on w2 ends: w2 stops the VLAN, w1 floods it no more.
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(2)]})

    def gone() -> bool:
        flooding = run_in("w1", "bridge", "fdb", "show", "dev", vxlan_device(10))
        stopped = "mlvlan10" not in run_in("w2", "ip", "-br", "link")
        return stopped and f"00:00:00:00:00:00 dst {workers['w2']}" not in flooding

    wait_until(gone, 15, "VLAN 10 to leave w2")
    assert not pings("g1", "10.200.10.12") and pings("g1", "10.200.10.1")

    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(1)]})
    wait_until(lambda: not Path("/sys/class/net/mlcc10").exists(), 15, "the CC's VLAN 10 to go")
    cc.stop()
    assert cc.dnsmasq() == []


def test_vde_processes_that_die_are_started_again_and_end_with_their_daemon(
    workers: dict[str, str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    tmp_path: Path,
) -> None:
    """The VDE backend: each host's switch, taps and wires are supervised by their
    daemon. A node's switch killed is started again with its taps and its wait for the
    CC's wire; the CC killed takes its switch and wires with it (nothing orphaned), and
    once restarted dials again; an orderly stop ends them all."""
    ncs, cc = workers_and_cc("vde", workers, nc_factory, cc_factory)
    with blank_image(tmp_path / "www", address="10.99.0.1") as (_, image):
        for n in (1, 2):  # round-robin: w1, w2
            reserve(cc, image, n)
    for n in (1, 2):
        guest, worker, _ = GUESTS[n]
        attach(
            guest,
            worker,
            "mlvlan10",
            "",
            tap=tap_name(iid(n), "private"),
            mac=str(private_net(n)["private_mac"]),
        )
        assert dhcp_client(guest, tmp_path) == f"{private_net(n)['private_ip']}/24 1500"
    assert pings("g1", "10.200.10.12", count=3)  # w1 → the CC's switch → w2

    def switches(folder: Path) -> list[int]:
        return pids_of(f"vde_switch --sock {folder}/")

    def across() -> bool:
        return pings("g1", "10.200.10.12")

    [w1_switch] = switches(ncs[0].instance_dir)
    os.kill(w1_switch, signal.SIGKILL)
    wait_until(across, 30, "w1's switch, taps and wire to come back")
    assert len(switches(ncs[0].instance_dir)) == 1

    cc_vde = Path(cc.state_dir) / "vde"
    [cc_switch] = switches(cc_vde)
    cc.kill9()
    wait_until(lambda: not switches(cc_vde), 10, "the killed CC's switch to end with it")
    wait_until(lambda: not pids_of(f"vde://{cc_vde}/"), 10, "its wires and taps to end too")
    cc.start()
    wait_until(across, 30, "the restarted CC to rebuild its switch and dial again")
    assert len(switches(cc_vde)) == 1 and switches(cc_vde) != [cc_switch]

    # w2's instance ends: w2's switch drops the VLAN, and the CC hangs up its wire
    w2_switch = VdeSwitch(ncs[1].instance_dir / VDE_FOLDER)
    assert "VLAN 0010" in w2_switch.command("vlan/print")
    wire_to_w2 = f"OPENSSL:{workers['w2']}:{WIRE_TCP_PORT}"
    assert pids_of(wire_to_w2)
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(2)]})

    def hung_up() -> bool:
        return "VLAN 0010" not in w2_switch.command("vlan/print") and not pids_of(wire_to_w2)

    wait_until(hung_up, 15, "w2 to leave VLAN 10 and the CC to hang up on it")
    assert "mlvd10" not in run_in("w2", "ip", "-br", "link")
    assert not across()  # the other end of VLAN 10 is gone

    cc.stop()
    assert not pids_of(f"vde://{cc_vde}/") and not switches(cc_vde)
    for nc in ncs:
        nc.stop()
        assert not pids_of(f"{nc.instance_dir}/")  # its switch, tap and listener


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("backend", ["vxlan", "vde"])
def test_a_users_instances_reach_each_other_across_workers_and_no_one_elses(
    backend: str,
    workers: dict[str, str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    """The whole chain, over each backend: the CLC gives each user's group a VLAN and
    addresses of its slice, the CC starts the VLANs where the instances land and serves
    their DHCP; two of alice's instances on different workers reach each other, and
    bob's, on the same worker as one of them, neither reaches it nor sees a packet of
    theirs."""
    overlay: dict[str, dict[str, Any]] = {
        w: {"netns": ns(w), "address": a, "overlay": backend, "overlay_address": a}
        for w, a in workers.items()
    }
    # public NICs on QEMU's user network: this test is about the private ones
    nodes = [fake_node(nc_factory, 2, public_bridge="user", **overlay[w]) for w in ("w1", "w2")]
    ncs = {node.name: w for node, w in zip(nodes, ("w1", "w2"), strict=True)}  # node → worker
    settings = {"private_subnet": SUBNET}
    cc = cc_factory(
        scheduler="round-robin", overlay=backend, overlay_address=TEST_BED_HERE, **settings
    )
    register(cc, *nodes)
    clc = clc_factory(address=TEST_BED_HERE, private_slice_prefix=24, instance_quota=0, **settings)
    clc.admin("cluster", "add", "zone-a", cc.url)
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    emi = clc.add_disk("blank", disk)
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    launched = [launch(ec2, emi) for ec2 in (alice, alice, bob)]  # round-robin: w1, w2, w1
    a1, a2, b1 = launched
    assert _vlan(a1) == _vlan(a2) and _vlan(b1) != _vlan(a1)

    for guest, instance in zip(("g1", "g2", "g3"), launched, strict=True):
        address = plug_in(guest, ncs[node_of(cc, instance["InstanceId"])], instance, tmp_path)
        assert address == instance["PrivateIpAddress"]  # the CC's DHCP, the CLC's address
    assert ncs[node_of(cc, a1["InstanceId"])] == ncs[node_of(cc, b1["InstanceId"])]

    with counting(ns("g3"), {"alice": f"ether saddr {mac_of(a1['PrivateIpAddress'])}"}) as seen:
        assert pings("g1", a2["PrivateIpAddress"], count=3)  # alice's, across the workers
        run_in("g3", "ip", "route", "add", f"{a1['PrivateIpAddress']}/32", "dev", "eth0")
        assert not pings("g3", a1["PrivateIpAddress"])  # bob's, beside alice's
        assert seen("alice") == 0  # not one of alice's frames reached bob's instance


def launch(ec2: Any, emi: str, zone: str = "") -> dict[str, Any]:
    """One instance of ``emi``, once running, as DescribeInstances shows it."""
    placement = {"Placement": {"AvailabilityZone": zone}} if zone else {}
    [ran] = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, **placement)["Instances"]
    ec2.get_waiter("instance_running").wait(
        InstanceIds=[ran["InstanceId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    [reservation] = ec2.describe_instances(InstanceIds=[ran["InstanceId"]])["Reservations"]
    return dict(reservation["Instances"][0])


def plug_in(guest: str, worker: str, instance: dict[str, Any], workdir: Path) -> str:
    """``guest`` as ``instance``'s private NIC, as libvirt plugs it into its VLAN's
    bridge on ``worker``; the address DHCP gave it."""
    attach(
        guest,
        worker,
        f"mlvlan{_vlan(instance)}",
        "",
        tap=tap_name(instance["InstanceId"], "private"),
        mac=mac_of(instance["PrivateIpAddress"]),
    )
    return dhcp_client(guest, workdir).split("/")[0]


def _vlan(instance: dict[str, Any]) -> int:
    """An instance's VLAN: slice N of the test's private subnet is VLAN N's."""
    return int(instance["PrivateIpAddress"].split(".")[2])


@pytest.mark.parametrize("backend", ["vxlan", "vde"])
def test_a_users_instances_in_two_clusters_reach_each_other_through_their_head_nodes(
    backend: str,
    two_clusters: tuple[str, str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    """Each cluster's CC joins the VLANs it carries to the other's over the head nodes'
    LAN: alice's instances, one per cluster on workers with the same address, reach each
    other; bob's, beside one of them, reaches neither; each cluster's instances take
    their addresses from their own CC, and no DHCP crosses between the clusters. Inside
    each cluster the overlay is ``backend``; between head nodes, VXLAN."""
    here, there = two_clusters
    worker = "10.99.0.2"  # in both clusters
    overlay = {"overlay": backend, "overlay_address": TEST_BED_HERE, "private_subnet": SUBNET}
    nodes = {
        w: fake_node(
            nc_factory,
            2,
            public_bridge="user",
            netns=ns(w),
            address=worker,
            overlay=backend,
            overlay_address=worker,
        )
        for w in ("w1", "w3")
    }
    ccs = peered_ccs(cc_factory, (here, there), overlay, {})
    register(ccs["zone-a"], nodes["w1"])
    register(ccs["zone-b"], nodes["w3"])
    clc = clc_factory(
        address=here, private_slice_prefix=24, instance_quota=0, private_subnet=SUBNET
    )
    for zone, cc in ccs.items():
        clc.admin("cluster", "add", zone, cc.url)
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    emi = clc.add_disk("blank", disk)
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    a1, a2, b2 = (
        launch(alice, emi, "zone-a"),
        launch(alice, emi, "zone-b"),
        launch(bob, emi, "zone-b"),
    )
    assert _vlan(a1) == _vlan(a2) and _vlan(b2) != _vlan(a1)

    vlan = _vlan(a1)
    router = f"10.200.{vlan}.1"  # on both CCs
    assert plug_in("g1", "w1", a1, tmp_path) == a1["PrivateIpAddress"]
    # what reaches zone-a's CC from zone-b, on the VLAN's bridge here
    g2_asks = f"iifname mlcc{vlan} ether saddr {mac_of(a2['PrivateIpAddress'])} udp dport 67"
    with (
        counting("", {"dhcp": g2_asks}) as heard,
        counting("", {"router": f"arp saddr ip {router}"}, family="arp") as arped,
    ):
        assert plug_in("g2", "w3", a2, tmp_path) == a2["PrivateIpAddress"]  # from zone-b's CC
        assert plug_in("g3", "w3", b2, tmp_path) == b2["PrivateIpAddress"]
        assert pings("g1", a2["PrivateIpAddress"], count=3)  # across the clusters
        # zone-b's router announces itself on the VLAN
        run_in("h2", "busybox", "arping", "-U", "-c", "2", "-I", f"mlcc{vlan}", router)
        assert heard("dhcp") == 0  # zone-b's DHCP stayed in zone-b
        assert arped("router") == 0  # and its router
    for guest in ("g1", "g2"):  # what crosses between the head nodes: VXLAN's MTU
        assert "mtu 1450" in run_in(guest, "ip", "link", "show", "eth0")
    run_in("g3", "ip", "route", "add", "10.200.0.0/16", "dev", "eth0")  # ask by ARP
    assert not pings("g3", a2["PrivateIpAddress"]) and not pings("g3", a1["PrivateIpAddress"])
