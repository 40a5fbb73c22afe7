"""The private overlay's host side on real packets: two hosts (namespaces) on their
private network, each with a bridge per VLAN made by the NC's ``Networks``, joined by
the NC's VXLAN or VDE overlay; instances (namespaces behind tap-named veths) on one
subnet, so only the overlay's VLANs keep them apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mallee.common.networks import Networks
from mallee.common.overlay import VxlanOverlay
from mallee.common.vde import VdeSwitch
from tests.support.hosts import attach, link, namespaces, ns, pings, run_in, vxlan_device
from tests.support.network import inside

HOSTS = {"a": "10.214.0.1", "b": "10.214.0.2"}
X, Y, Z = "10.215.0.1", "10.215.0.2", "10.215.0.3"  # x on a's VLAN 10, y on b's 10, z on b's 20


@pytest.fixture
def two_hosts() -> Iterator[dict[str, dict[int, str]]]:
    """Hosts a and b linked, each with bridges for VLANs 10 and 20; their names."""
    with namespaces("a", "b", "x", "y", "z"):
        link("a", "b", HOSTS["a"], HOSTS["b"])
        bridges = {}
        for h in ("a", "b"):
            with inside(ns(h)):
                networks = Networks("mlvlan")
                bridges[h] = {v: str(networks.start(v)["bridge"]) for v in (10, 20)}
        yield bridges


def test_vxlan_carries_each_vlan_to_the_other_host_and_keeps_vlans_apart(
    two_hosts: dict[str, dict[int, str]],
) -> None:
    overlays = {h: VxlanOverlay(HOSTS[h]) for h in HOSTS}
    for h, peer in (("a", "b"), ("b", "a")):
        with inside(ns(h)):
            for vlan in (10, 20):
                overlays[h].join(vlan, two_hosts[h][vlan], [HOSTS[peer]])
                overlays[h].join(vlan, two_hosts[h][vlan], [HOSTS[peer]])  # idempotent
    mtu = overlays["a"].mtu
    attach("x", "a", two_hosts["a"][10], X, mtu)
    attach("y", "b", two_hosts["b"][10], Y, mtu)
    attach("z", "b", two_hosts["b"][20], Z, mtu)

    assert pings("x", Y)
    assert not pings("x", Z)  # same subnet, another VLAN: another VNI
    # The MTU holds: a full-size packet crosses (none would, were it 1500 over VXLAN).
    run_in("x", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), Y)

    flooding = run_in("a", "bridge", "fdb", "show", "dev", vxlan_device(10))
    assert f"00:00:00:00:00:00 dst {HOSTS['b']}" in flooding
    with inside(ns("a")):
        overlays["a"].join(10, two_hosts["a"][10], [])  # b left the VLAN
        overlays["a"].leave(20)
    flooding = run_in("a", "bridge", "fdb", "show", "dev", vxlan_device(10))
    assert "00:00:00:00:00:00" not in flooding
    assert vxlan_device(20) not in run_in("a", "ip", "-br", "link")


def test_vde_switches_carry_each_vlan_over_their_wire_and_keep_vlans_apart(
    two_hosts: dict[str, dict[int, str]], tmp_path: Path
) -> None:
    switches = {h: VdeSwitch(tmp_path / h) for h in HOSTS}
    try:
        for h, switch in switches.items():
            with inside(ns(h)):
                switch.start()
                switch.join(10, two_hosts[h][10], port=1)
                switch.join(20, two_hosts[h][20], port=2)
                switch.trunk(3, [10, 20])
        socat = ["socat", "-b", "65536", "-"]
        with inside(ns("a")):
            listen = [*socat, "TCP-LISTEN:17011,reuseaddr,nodelay"]
            switches["a"].plug(f"vde://{switches['a'].control}[3]", pipe_to=listen)
        attach("x", "a", two_hosts["a"][10], X)
        attach("y", "b", two_hosts["b"][10], Y)
        attach("z", "b", two_hosts["b"][20], Z)
        assert not pings("x", Y)  # no wire yet
        with inside(ns("b")):
            connect = [*socat, f"TCP:{HOSTS['a']}:17011,nodelay"]
            switches["b"].plug(f"vde://{switches['b'].control}[3]", pipe_to=connect)

        assert pings("x", Y, count=3)
        assert not pings("x", Z)
        assert "VLAN 0020" in switches["a"].command("vlan/print")
    finally:
        for switch in switches.values():
            switch.stop()
    assert not list(tmp_path.glob("*/ctl/*"))  # the switches took their sockets away
