"""The private overlay's control plane on real packets: two worker hosts (network
namespaces) each running a real `mallee-nc`, a real `mallee-cc` on the test's own
namespace reaching them over their LAN, VXLAN between all three. Instances run on
libvirt's test driver; namespaces behind veths named as the instances' taps, with their
MACs, stand in for their private NICs (TCG guests would need a libvirtd per host) and
ask the CC's DHCP for their addresses as a guest does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mallee.nc.service import tap_name
from tests.support.cluster import SMALL, blank_image, fake_node, iid, register
from tests.support.daemons import CcDaemon, NcDaemon
from tests.support.guest import wait_until
from tests.support.hosts import attach, namespaces, ns, pings, run_in, underlay, vxlan_device

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
    take it; what the answer said: "ADDRESS/PREFIX ROUTER MTU"."""
    script = workdir / "udhcpc.sh"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = bound ] || exit 0\n'
        'ip addr add "$ip/$mask" dev "$interface"\n'
        'ip link set "$interface" mtu "$mtu"\n'
        'ip route add default via "$router"\n'
        'echo "$ip/$mask $router $mtu"\n'
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
    )
    return answer.strip().splitlines()[-1]


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
    ncs = [
        fake_node(
            nc_factory,
            2,
            netns=ns(w),
            address=workers[w],
            overlay="vxlan",
            overlay_address=workers[w],
        )
        for w in ("w1", "w2")
    ]
    cc = cc_factory(
        scheduler="round-robin", overlay="vxlan", overlay_address="10.99.0.1", private_subnet=SUBNET
    )
    register(cc, *ncs)
    with blank_image(tmp_path / "www", address="10.99.0.1") as (_, image):
        for n in GUESTS:  # round-robin: w1, w2, w1
            body = {
                "reservation_id": "r-0123456789abcdef0",
                "owner_id": "alice",
                "vm_type": SMALL,
                "image": image,
                "instances": [{"instance_id": iid(n), "net": private_net(n)}],
            }
            [view] = cc.client.call("POST", "/v1/instances", body)["instances"]
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
        assert answer == f"{private_net(n)['private_ip']}/24 10.200.{vlan}.1 1450"
    assert pings("g1", "10.200.10.1") and pings("g2", "10.200.10.1")  # the CC: the router
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
    cc.start()
    wait_until(
        lambda: len(cc.dnsmasq()) == 2 and before not in cc.dnsmasq(),
        15,
        "the restarted CC's dnsmasqs to replace the old ones",
    )
    assert pings("g1", "10.200.10.12") and pings("g1", "10.200.10.1")
    flooding = run_in("w1", "bridge", "fdb", "show", "dev", vxlan_device(10))
    assert flooding.count("00:00:00:00:00:00") == 2  # w2 and the CC, once each

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


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
