"""An isolated instance network for tests: a bridge on the host whose only other member
is a veth into a network namespace serving DHCP (busybox udhcpd) and an EC2-style
metadata service on 169.254.169.254. Nothing leaves the machine, and the host itself
gets no address on it, so the host's own routes (and any real metadata service the
host can reach) are untouched."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from mallee.clc.instances import mac_of
from mallee.common import host
from mallee.common.errors import HostCommandFailed

METADATA_IP = "169.254.169.254"
DHCP_PORT, HTTP_PORT = 67, 80


@dataclass(frozen=True)
class MetadataNetwork:
    bridge: str
    ssh_key: str
    user_data: bytes


def write_metadata(root: Path, ssh_key: str, user_data: bytes, instance_id: str = "") -> None:
    """The files of an EC2-style metadata service, to be served from ``root``."""
    files = {
        "latest/meta-data/public-keys/0/openssh-key": (ssh_key + "\n").encode(),
        "latest/user-data": user_data,
    }
    if instance_id:
        files["latest/meta-data/instance-id"] = instance_id.encode()
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)


def _wait_listening(netns: str, processes: list[subprocess.Popen[bytes]], wanted: set[str]) -> None:
    """Wait until the servers listen in ``netns`` (``wanted``: "udp:67", say), so that
    a guest booting next is answered."""
    deadline = time.monotonic() + 10
    while True:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        sockets = host.run("ip", "netns", "exec", netns, "ss", "-Hlntu")
        listening = {
            f"{netid}:{local.rpartition(':')[2]}"
            for netid, *_, local, _peer in (line.split() for line in sockets.splitlines())
        }
        if wanted <= listening:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sorted(wanted - listening)} not listening in {netns} after 10 s")
        time.sleep(0.05)


@contextmanager
def metadata_network(workdir: Path, ssh_key: str, user_data: bytes) -> Iterator[MetadataNetwork]:
    tag = secrets.token_hex(2)
    netns, bridge, veth, peer = f"mallee-md-{tag}", f"mlmdbr{tag}", f"mlmd{tag}a", f"mlmd{tag}b"
    root = workdir / "metadata"
    write_metadata(root, ssh_key, user_data)
    (workdir / "udhcpd.leases").touch()
    (workdir / "udhcpd.conf").write_text(
        f"start 169.254.10.10\nend 169.254.10.99\ninterface {peer}\n"
        f"option subnet 255.255.0.0\noption lease 600\n"
        f"lease_file {workdir}/udhcpd.leases\npidfile {workdir}/udhcpd.pid\n"
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        host.run("ip", "netns", "add", netns)
        host.run("ip", "link", "add", bridge, "type", "bridge")
        host.run("ip", "link", "set", bridge, "up")
        host.run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        host.run("ip", "link", "set", veth, "master", bridge, "up")
        host.run("ip", "link", "set", peer, "netns", netns)
        host.run("ip", "-n", netns, "addr", "add", f"{METADATA_IP}/16", "dev", peer)
        host.run("ip", "-n", netns, "link", "set", peer, "up")
        host.run("ip", "-n", netns, "link", "set", "lo", "up")
        in_netns = ["ip", "netns", "exec", netns]
        processes.append(
            subprocess.Popen(
                [*in_netns, "busybox", "udhcpd", "-f", str(workdir / "udhcpd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    *in_netns,
                    sys.executable,
                    "-m",
                    "http.server",
                    str(HTTP_PORT),
                    "--bind",
                    METADATA_IP,
                    "--directory",
                    str(root),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_listening(netns, processes, {f"udp:{DHCP_PORT}", f"tcp:{HTTP_PORT}"})
        yield MetadataNetwork(bridge, ssh_key, user_data)
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for argv in (("link", "del", bridge), ("link", "del", veth), ("netns", "del", netns)):
            with contextlib.suppress(HostCommandFailed):  # what a failed setup never made
                host.run("ip", *argv)


@dataclass(frozen=True)
class InstanceNetwork:
    """A bridge for instances' NICs, whose DHCP gives each MAC d0:0d:A:B:C:D the
    address A.B.C.D of ``subnet`` (the CLC's ``private_subnet``), and whose router
    redirects 169.254.169.254:80 to the host's port ``metadata_port``, keeping the
    guest's source address: what a cluster's network does for the CLC's metadata
    service."""

    bridge: str
    subnet: str
    netns: str  # the router's: the "public" side
    gateway: str  # the router's address on the bridge

    def address(self, host_number: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[host_number])

    def mac(self, host_number: int) -> str:
        """The MAC the network's DHCP gives ``address(host_number)``."""
        return mac_of(self.address(host_number))


@contextmanager
def instance_network(workdir: Path, metadata_port: int) -> Iterator[InstanceNetwork]:
    """Inside a network namespace: the instances' router (udhcpd and an nftables DNAT);
    on the host: the bridge, a /30 link to the router and a route to the subnet over
    it, all removed after."""
    tag = secrets.randbelow(200) + 20
    subnet, gateway = f"10.77.{tag}.0/24", f"10.77.{tag}.1"
    host_ip, router_ip = f"100.100.{tag}.1", f"100.100.{tag}.2"
    netns, bridge = f"mallee-in-{tag}", f"mlinbr{tag}"
    port, inside = f"mlin{tag}a", f"mlin{tag}b"  # the bridge's port, the router's NIC
    uplink, uplink_inside = f"mlup{tag}a", f"mlup{tag}b"
    leases = "".join(
        f"static_lease d0:0d:0a:4d:{tag:02x}:{h:02x} 10.77.{tag}.{h}\n" for h in range(2, 255)
    )
    (workdir / "udhcpd.leases").touch()
    (workdir / "udhcpd.conf").write_text(
        f"start 10.77.{tag}.2\nend 10.77.{tag}.254\ninterface {inside}\n"
        f"option subnet 255.255.255.0\noption router {gateway}\noption lease 600\n"
        f"lease_file {workdir}/udhcpd.leases\npidfile {workdir}/udhcpd.pid\n{leases}"
    )
    nat = (
        "table ip mallee_test_metadata {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat;\n"
        f"    ip daddr {METADATA_IP} tcp dport 80 dnat to {host_ip}:{metadata_port}\n"
        "  }\n"
        "}\n"
    )
    (workdir / "nat.nft").write_text(nat)
    processes: list[subprocess.Popen[bytes]] = []
    in_netns = ["ip", "netns", "exec", netns]
    try:
        host.run("ip", "netns", "add", netns)
        host.run("ip", "link", "add", bridge, "type", "bridge")
        host.run("ip", "link", "set", bridge, "up")
        host.run("ip", "link", "add", port, "type", "veth", "peer", "name", inside)
        host.run("ip", "link", "set", port, "master", bridge, "up")
        host.run("ip", "link", "set", inside, "netns", netns)
        host.run("ip", "link", "add", uplink, "type", "veth", "peer", "name", uplink_inside)
        host.run("ip", "link", "set", uplink_inside, "netns", netns)
        host.run("ip", "addr", "add", f"{host_ip}/30", "dev", uplink)
        host.run("ip", "link", "set", uplink, "up")
        host.run("ip", "route", "add", subnet, "via", router_ip, "dev", uplink)
        host.run("ip", "-n", netns, "addr", "add", f"{gateway}/24", "dev", inside)
        host.run("ip", "-n", netns, "addr", "add", f"{router_ip}/30", "dev", uplink_inside)
        for nic in ("lo", inside, uplink_inside):
            host.run("ip", "-n", netns, "link", "set", nic, "up")
        host.run(*in_netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.run(*in_netns, "nft", "-f", str(workdir / "nat.nft"))
        processes.append(
            subprocess.Popen(
                [*in_netns, "busybox", "udhcpd", "-f", str(workdir / "udhcpd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_listening(netns, processes, {f"udp:{DHCP_PORT}"})
        yield InstanceNetwork(bridge, subnet, netns, gateway)
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for argv in (
            ("link", "del", bridge),
            ("link", "del", port),
            ("link", "del", uplink),
            ("netns", "del", netns),
        ):
            with contextlib.suppress(HostCommandFailed):  # what a failed setup never made
                host.run("ip", *argv)


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block's network calls in ``netns`` (this thread only); sockets made here
    stay in it."""
    pyroute2_netns.pushns(netns)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def connect(netns: str, address: str, port: int, timeout_s: float = 1.0) -> socket.socket | None:
    """A TCP connection from ``netns``, or None if none was made within ``timeout_s``."""
    with inside(netns):
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError:
            return None


def dropped(netns: str, address: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection from ``netns`` goes unanswered (a firewall's drop), as
    opposed to made or refused (nobody listening)."""
    with inside(netns):
        attempt = socket.socket()
    attempt.settimeout(timeout_s)
    with attempt:
        try:
            attempt.connect((address, port))
        except TimeoutError:
            return True
        except OSError:
            return False
    return False


@contextmanager
def counting(
    netns: str, matches: dict[str, str], family: str = "inet"
) -> Iterator[Callable[[str], int]]:
    """Counters of the packets arriving in ``netns`` (``""``: the test's own namespace)
    that match each of ``matches`` (name: an nft match, e.g. "ether saddr
    d0:0d:0a:00:00:02"): a function of a name giving its count so far. ``inet``: what
    arrives, whatever the receiver then does; ``arp``: the ARP this host takes in."""
    table = "mallee_test_seen"
    hook = "prerouting priority -400" if family == "inet" else "input priority 0"
    rules = "".join(f'    {match} counter comment "{name}"\n' for name, match in matches.items())
    ruleset = (
        f"table {family} {table} {{\n  chain seen {{\n"
        f"    type filter hook {hook};\n{rules}  }}\n}}\n"
    )
    in_netns = ("ip", "netns", "exec", netns) if netns else ()
    host.run(*in_netns, "nft", "-f", "-", stdin=ruleset)

    def count(name: str) -> int:
        listed = json.loads(host.run(*in_netns, "nft", "-j", "list", "table", family, table))
        for item in listed["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == name:
                return sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        raise KeyError(name)

    try:
        yield count
    finally:
        host.run(*in_netns, "nft", "delete", "table", family, table)


def echoes(connection: socket.socket) -> bool:
    """Whether an echo server answers on an open connection (within its timeout)."""
    try:
        connection.sendall(b"ping\n")
        return connection.recv(16) == b"ping\n"
    except OSError:
        return False


@contextmanager
def hanging_up(netns: str, port: int) -> Iterator[list[str]]:
    """A TCP server in ``netns`` on ``port`` that accepts each connection and closes it
    (so a client that waits for the other side to close ends), until the block ends;
    the block gets the list of the addresses connections came from, as they come."""
    with inside(netns):
        listener = socket.create_server(("0.0.0.0", port), backlog=512)
    peers: list[str] = []

    def serve() -> None:
        while True:
            try:
                connection, (peer, _) = listener.accept()
            except OSError:
                return
            peers.append(peer)
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield peers
    finally:
        listener.close()


@dataclass(frozen=True)
class PublicLan:
    """The network a head node's CC serves in public_mode managed or static: a bridge
    on this host holding the CC's address (the instances' router); the nodes bridge
    instances' public NICs onto it. Beyond this host, ``outside``: a namespace that
    reaches the elastic addresses (203.0.113.0/24) through it, as the site's routers do."""

    bridge: str
    router: str
    subnet: str
    outside: str  # the namespace
    outside_ip: str

    def address(self, host_number: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[host_number])


@contextmanager
def public_lan() -> Iterator[PublicLan]:
    """A bridge at 198.18.N.1/24 (a benchmarking range no site routes), removed after
    with the CC's table on it, should a killed CC have left one."""
    tag = secrets.randbelow(200) + 20
    bridge, uplink, outside = f"mlpub{tag}", f"mlout{tag}", f"mallee-out-{tag}"
    try:
        host.run("ip", "link", "add", bridge, "type", "bridge")
        host.run("ip", "addr", "add", f"198.18.{tag}.1/24", "dev", bridge)
        host.run("ip", "link", "set", bridge, "up")
        host.run("ip", "netns", "add", outside)
        host.run("ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0",
                 "netns", outside)  # fmt: skip
        host.run("ip", "addr", "add", f"100.66.{tag}.1/30", "dev", uplink)
        host.run("ip", "link", "set", uplink, "up")
        host.run("ip", "-n", outside, "addr", "add", f"100.66.{tag}.2/30", "dev", "eth0")
        for nic in ("lo", "eth0"):
            host.run("ip", "-n", outside, "link", "set", nic, "up")
        host.run("ip", "-n", outside, "route", "add", "203.0.113.0/24", "via", f"100.66.{tag}.1")
        for nic in (bridge, uplink):  # these two only: the host's own forwarding stays off
            host.run("sysctl", "-qw", f"net.ipv4.conf.{nic}.forwarding=1")
        # what the CC does not translate goes nowhere (not out of the host's default route)
        host.run("ip", "route", "add", "unreachable", "203.0.113.0/24")
        yield PublicLan(bridge, f"198.18.{tag}.1", f"198.18.{tag}.0/24", outside, f"100.66.{tag}.2")
    finally:
        for argv in (
            ("link", "del", bridge),
            ("link", "del", uplink),
            ("netns", "del", outside),
            ("route", "del", "unreachable", "203.0.113.0/24"),
        ):
            with contextlib.suppress(HostCommandFailed):
                host.run("ip", *argv)
        with contextlib.suppress(HostCommandFailed):
            host.run("nft", "delete", "table", "ip", f"mallee_cc_{bridge}")


def nft_tables() -> set[str]:
    """``family name`` of every nftables table of this host's namespace."""
    return {
        line.removeprefix("table ").strip()
        for line in host.run("nft", "list", "tables").splitlines()
        if line.startswith("table ")
    }
