"""Hosts and instances made of network namespaces, for tests and benchmarks of the
network: a host is a namespace with its own links, bridges and processes; an instance
is a namespace behind a veth whose host end is named as an instance's tap and is a port
of a bridge on its host, as an NC attaches a guest's NIC."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

from mallee.common import host
from mallee.common.errors import HostCommandFailed
from mallee.common.overlay import VxlanOverlay

PREFIX = "mallee-h-"


def ns(name: str) -> str:
    return PREFIX + name


def vxlan_device(vlan: int) -> str:
    """An NC's VXLAN device of ``vlan``."""
    return VxlanOverlay("").device(vlan)


def run_in(name: str, *argv: str, timeout_s: float = 120, stdin: str | None = None) -> str:
    return host.run("ip", "netns", "exec", ns(name), *argv, timeout_s=timeout_s, stdin=stdin)


@contextmanager
def namespaces(*names: str) -> Iterator[None]:
    """Namespaces ``names`` (loopback up), removed after with all they hold."""
    try:
        for name in names:
            host.run("ip", "netns", "add", ns(name))
            host.run("ip", "-n", ns(name), "link", "set", "lo", "up")
        yield
    finally:
        for name in names:
            with contextlib.suppress(HostCommandFailed):
                host.run("ip", "netns", "del", ns(name))


def link(a: str, b: str, address_a: str, address_b: str, enslave_to: str = "") -> None:
    """Hosts ``a`` and ``b`` joined by a veth pair (``eth0`` on both sides), on a /24.
    With ``enslave_to`` each ``eth0`` is a port of that bridge instead, which holds the
    address (as a host's NIC on the LAN its public bridge is on)."""
    host.run("ip", "-n", ns(a), "link", "add", "eth0", "type", "veth",
             "peer", "name", "eth0", "netns", ns(b))  # fmt: skip
    for name, address in ((a, address_a), (b, address_b)):
        where = enslave_to or "eth0"
        if enslave_to:
            host.run("ip", "-n", ns(name), "link", "set", "eth0", "master", enslave_to)
        host.run("ip", "-n", ns(name), "addr", "add", f"{address}/24", "dev", where)
        host.run("ip", "-n", ns(name), "link", "set", "eth0", "up")


def attach(
    instance: str,
    on: str,
    bridge: str,
    address: str,
    mtu: int = 1500,
    tap: str = "",
    mac: str = "",
) -> None:
    """Instance ``instance`` (a namespace) on ``bridge`` of host ``on``, at ``address``
    (a /24), through a veth whose host end is named as a tap (``tap``: as the NC names
    a given instance's), its NIC with ``mac`` if given."""
    tap = tap or f"mtp{instance}"[:15]
    host.run("ip", "-n", ns(on), "link", "add", tap, "type", "veth",
             "peer", "name", "eth0", "netns", ns(instance))  # fmt: skip
    if mac:
        host.run("ip", "-n", ns(instance), "link", "set", "eth0", "address", mac)
    host.run("ip", "-n", ns(on), "link", "set", tap, "master", bridge, "mtu", str(mtu), "up")
    if address:  # else it asks DHCP for one
        host.run("ip", "-n", ns(instance), "addr", "add", f"{address}/24", "dev", "eth0")
    host.run("ip", "-n", ns(instance), "link", "set", "eth0", "mtu", str(mtu), "up")


def pings(source: str, address: str, count: int = 1) -> bool:
    try:
        run_in(source, "ping", "-c", str(count), "-W", "1", address)
        return True
    except HostCommandFailed:
        return False


@contextmanager
def underlay(*names: str, head: str = "") -> Iterator[dict[str, str]]:
    """Hosts ``names`` (namespaces made already) on one LAN with their head node (the
    test's own namespace, or ``head``'s) at 10.99.0.1, at 10.99.0.2, .3, … in order
    (their ``eth1``): the network their controller reaches their daemons on, and their
    overlay runs over. Their addresses by name. Two such LANs with different heads use
    the same addresses, as two clusters' private networks may (seed Figure 2)."""
    bridge = "mlunder"
    addresses = {name: f"10.99.0.{n + 2}" for n, name in enumerate(names)}
    there = ("-n", ns(head)) if head else ()
    try:
        host.run("ip", *there, "link", "add", bridge, "type", "bridge")
        host.run("ip", *there, "addr", "add", "10.99.0.1/24", "dev", bridge)
        host.run("ip", *there, "link", "set", bridge, "up")
        for name, address in addresses.items():
            port = f"mlu{name}"[:15]
            host.run("ip", *there, "link", "add", port, "type", "veth",
                     "peer", "name", "eth1", "netns", ns(name))  # fmt: skip
            host.run("ip", *there, "link", "set", port, "master", bridge, "up")
            host.run("ip", "-n", ns(name), "addr", "add", f"{address}/24", "dev", "eth1")
            host.run("ip", "-n", ns(name), "link", "set", "eth1", "up")
        yield addresses
    finally:
        for link_name in [f"mlu{name}"[:15] for name in names] + [bridge]:
            with contextlib.suppress(HostCommandFailed):
                host.run("ip", *there, "link", "del", link_name)


@contextmanager
def head_link(head: str) -> Iterator[tuple[str, str]]:
    """The test's own namespace and head node ``head`` on a LAN of their own (the
    network two clusters' head nodes share), at 10.98.0.1 and 10.98.0.2. ``head``
    forwards its workers' packets there, masqueraded as its own (seed Figure 2: the
    workers' private addresses mean nothing outside their cluster)."""
    here, there = "10.98.0.1", "10.98.0.2"
    nat = (
        "table ip mallee_test_nat {\n  chain out {\n"
        "    type nat hook postrouting priority 100;\n"
        '    oifname "eth0" masquerade\n  }\n}\n'
    )
    try:
        host.run("ip", "link", "add", "mlheads", "type", "veth",
                 "peer", "name", "eth0", "netns", ns(head))  # fmt: skip
        host.run("ip", "addr", "add", f"{here}/24", "dev", "mlheads")
        host.run("ip", "link", "set", "mlheads", "up")
        host.run("ip", "-n", ns(head), "addr", "add", f"{there}/24", "dev", "eth0")
        host.run("ip", "-n", ns(head), "link", "set", "eth0", "up")
        run_in(head, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run_in(head, "nft", "-f", "-", stdin=nat)
        yield here, there
    finally:
        with contextlib.suppress(HostCommandFailed):
            host.run("ip", "link", "del", "mlheads")
