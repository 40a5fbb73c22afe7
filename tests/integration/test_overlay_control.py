"""The private overlay's control plane on real packets: two worker hosts (network
namespaces) each running a real `mallee-nc`, a real `mallee-cc` on the test's own
namespace reaching them over their LAN, VXLAN between the workers. Instances run on
libvirt's test driver; namespaces behind veths named as the instances' taps, with their
MACs and addresses, stand in for their private NICs (TCG guests would need a libvirtd
per host)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mallee.nc.overlay import VxlanOverlay
from mallee.nc.service import tap_name
from tests.support.cluster import SMALL, blank_image, fake_node, iid, register
from tests.support.daemons import CcDaemon, NcDaemon
from tests.support.guest import wait_until
from tests.support.hosts import attach, namespaces, ns, pings, run_in, underlay


def private_net(n: int, vlan: int) -> dict[str, object]:
    return {"private_mac": f"d0:0d:0a:c8:00:{n:02x}", "private_ip": f"10.200.0.{n}", "vlan": vlan}


def test_the_cc_joins_each_vlan_across_the_workers_that_carry_it(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], tmp_path: Path
) -> None:
    with namespaces("w1", "w2", "g1", "g2", "g3"), underlay("w1", "w2") as address:
        ncs = [
            fake_node(
                nc_factory,
                2,
                netns=ns(w),
                address=address[w],
                overlay="vxlan",
                overlay_address=address[w],
            )
            for w in ("w1", "w2")
        ]
        cc = cc_factory(scheduler="round-robin")
        register(cc, *ncs)
        with blank_image(tmp_path / "www", address="10.99.0.1") as (_, image):
            placed = {}
            for n, vlan in ((1, 10), (2, 10), (3, 20)):  # round-robin: w1, w2, w1
                body = {
                    "reservation_id": "r-0123456789abcdef0",
                    "owner_id": "alice",
                    "vm_type": SMALL,
                    "image": image,
                    "instances": [{"instance_id": iid(n), "net": private_net(n, vlan)}],
                }
                [view] = cc.client.call("POST", "/v1/instances", body)["instances"]
                placed[n] = view["node"]
        assert [placed[n] for n in (1, 2, 3)] == [ncs[0].name, ncs[1].name, ncs[0].name]

        # each instance's NIC, as libvirt would plug it into its VLAN's bridge
        for n, (guest, on, vlan) in enumerate(
            (("g1", "w1", 10), ("g2", "w2", 10), ("g3", "w1", 20)), start=1
        ):
            net = private_net(n, vlan)
            attach(
                guest,
                on,
                f"mlvlan{vlan}",
                str(net["private_ip"]),
                tap=tap_name(iid(n), "private"),
                mac=str(net["private_mac"]),
            )
        assert pings("g1", "10.200.0.2", count=3)  # VLAN 10, across the workers
        assert not pings("g3", "10.200.0.2")  # VLAN 20: not across
        assert not pings("g3", "10.200.0.1")  # nor on its own worker

        flooding = run_in("w1", "bridge", "fdb", "show", "dev", VxlanOverlay.device(10))
        assert f"00:00:00:00:00:00 dst {address['w2']}" in flooding
        assert "00:00:00:00:00:00" not in run_in(
            "w1", "bridge", "fdb", "show", "dev", VxlanOverlay.device(20)
        )  # alone on VLAN 20: floods nowhere

        # The CC killed: the networks carry on; restarted, it tells the nodes again, and
        # they stay as they were. (An NC's restart is not tried here: libvirt's test
        # driver forgets its domains with the process, so its instances would end.)
        cc.kill9()
        assert pings("g1", "10.200.0.2")
        cc.start()
        wait_until(
            lambda: {n["health"] for n in cc.client.call("GET", "/v1/nodes")["nodes"]} == {"up"},
            15,
            "the nodes to be up",
        )
        assert pings("g1", "10.200.0.2")
        flooding = run_in("w1", "bridge", "fdb", "show", "dev", VxlanOverlay.device(10))
        assert flooding.count("00:00:00:00:00:00") == 1

        # The last instance of VLAN 10 on w2 ends: w2 stops the VLAN, w1 floods no more.
        cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(2)]})

        def left() -> bool:
            gone = "mlvlan10" not in run_in("w2", "ip", "-br", "link")
            flooding = run_in("w1", "bridge", "fdb", "show", "dev", VxlanOverlay.device(10))
            return gone and "00:00:00:00:00:00" not in flooding

        wait_until(left, 15, "VLAN 10 to leave w2")
        assert not pings("g1", "10.200.0.2")
