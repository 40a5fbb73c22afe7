"""The private overlay's host side: how a VLAN's bridge on this host reaches the same
VLAN's bridges on the other hosts (seed §2.2). Two backends, one per deployment:

- **VXLAN**, the kernel's: a device per VLAN (VNI = VLAN) on this host's underlay
  address, a port of the VLAN's bridge, with a flood entry per peer host (no multicast
  needed). Different VNIs never reach each other. Its MTU is the underlay's less 50.
- **VDE**, the seed's: the host's ``vde_switch`` (fast spanning tree on, so redundant
  wires do not loop), the VLAN's bridge joined to it by a tap on an access port of that
  VLAN, and wires to peer switches on trunk ports, which carry every VLAN tagged.

Links are made through netlink (pyroute2); VDE's programs are run, not reimplemented.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from mallee.common.errors import NetworkSetupFailed

VXLAN_PORT = 4789  # IANA's
VXLAN_OVERHEAD = 50  # outer Ethernet, IPv4, UDP and VXLAN headers
FLOOD = "00:00:00:00:00:00"  # the forwarding entry unknown and broadcast frames follow


def overlay_problem(section: str, overlay: str, address: str) -> str:
    """Why a daemon's overlay keys (``section``: its config section) cannot work on this
    host ("" if they can)."""
    if overlay == "":
        return ""
    if overlay != "vxlan":
        return (
            f'[{section}] overlay: {overlay!r} is not an overlay mallee runs yet; use "vxlan"'
            ' (hosts that reach each other over UDP) or "" (none)'
        )
    if not address:
        return (
            f"[{section}] overlay = vxlan needs overlay_address, this host's address on the"
            " underlay"
        )
    return local_address_problem(section, "overlay_address", address)


def local_address_problem(section: str, key: str, address: str) -> str:
    """Why ``[section] key`` = ``address`` is not an address of this host ("" if it is)."""
    with IPRoute() as ipr:
        local = {m.get("IFA_ADDRESS") for m in ipr.get_addr(family=socket.AF_INET)}
    if address not in local:
        return (
            f"[{section}] {key}: {address} is not an address of this host (it has"
            f" {', '.join(sorted(local))})"
        )
    return ""


class VxlanOverlay:
    """``prefix`` names the devices: a CC and an NC sharing a host each keep their own.
    VLAN N's VNI is ``vni_base`` + N: the kernel lets one host have one device per VNI
    and port, so a second overlay of the same VLANs (between clusters) needs VNIs of its
    own."""

    def __init__(
        self,
        local: str,
        underlay_mtu: int = 1500,
        port: int = VXLAN_PORT,
        prefix: str = "mlvx",
        vni_base: int = 0,
    ) -> None:
        self.local = local
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self.port = port
        self.prefix = prefix
        self.vni_base = vni_base

    def device(self, vlan: int) -> str:
        return f"{self.prefix}{vlan}"

    def join(self, vlan: int, bridge: str, peers: Collection[str]) -> None:
        """Make VLAN ``vlan``'s device a port of ``bridge`` (idempotent) flooding to
        exactly ``peers``: entries of hosts no longer in the VLAN go."""
        device = self.device(vlan)
        try:
            with IPRoute() as ipr:
                if not ipr.link_lookup(ifname=device):
                    ipr.link(
                        "add",
                        ifname=device,
                        kind="vxlan",
                        vxlan_id=self.vni_base + vlan,
                        vxlan_local=self.local,
                        vxlan_port=self.port,
                        vxlan_learning=1,
                        mtu=self.mtu,
                    )
                [index] = ipr.link_lookup(ifname=device)
                [master] = ipr.link_lookup(ifname=bridge)
                ipr.link("set", index=index, master=master, state="up")
                flooded = {
                    entry.get("NDA_DST")
                    for entry in ipr.fdb("dump", ifindex=index)
                    if entry.get("ifindex") == index and entry.get("NDA_LLADDR") == FLOOD
                }
                for peer in sorted(set(peers) - flooded):
                    ipr.fdb("append", ifindex=index, lladdr=FLOOD, dst=peer)
                for peer in sorted(flooded - set(peers)):
                    ipr.fdb("del", ifindex=index, lladdr=FLOOD, dst=peer)
        except (NetlinkError, ValueError) as e:
            raise NetworkSetupFailed(f"VLAN {vlan}: VXLAN device {device}: {e}") from e

    def leave(self, vlan: int) -> None:
        with IPRoute() as ipr, contextlib.suppress(NetlinkError, ValueError):
            [index] = ipr.link_lookup(ifname=self.device(vlan))
            ipr.link("del", index=index)


class VdeSwitch:
    """The host's ``vde_switch``, run by its owner and stopped with it. Its console is
    a pipe the owner holds (the switch ends when it closes); commands go through its
    management socket."""

    def __init__(self, directory: Path, ports: int = 128) -> None:
        self.directory = directory
        self.control = directory / "ctl"
        self.management = directory / "mgmt"
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None
        self.plugs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start the switch; sockets an earlier switch left in its folder go first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.management.unlink(missing_ok=True)
        shutil.rmtree(self.control, ignore_errors=True)
        self.process = subprocess.Popen(
            [
                "vde_switch",
                "--sock",
                str(self.control),
                "--mgmt",
                str(self.management),
                "--numports",
                str(self.ports),
                "--fstp",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.management.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise NetworkSetupFailed(f"vde_switch did not start in {self.directory}")
            time.sleep(0.02)

    def command(self, line: str) -> str:
        """One management command; its output, or NetworkSetupFailed with the switch's
        own words."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
            channel.settimeout(5)
            channel.connect(str(self.management))
            _prompted(channel)  # the banner
            channel.sendall(line.encode() + b"\n")
            answer = _prompted(channel)
        *output, status = answer.rstrip().splitlines()
        code, _, words = status.partition(" ")
        if code != "1000":
            raise NetworkSetupFailed(f"vde_switch: {line}: {words}")
        return "\n".join(output)

    def join(self, vlan: int, bridge: str, port: int) -> str:
        """Make switch port ``port`` an access port of ``vlan`` and join ``bridge`` to
        it by a tap (``mlvd<vlan>``); the tap's name."""
        tap = f"mlvd{vlan}"
        with IPRoute() as ipr:
            joined = bool(ipr.link_lookup(ifname=tap))
        if not joined:  # else an earlier join made it all
            with contextlib.suppress(NetworkSetupFailed):  # another port's join made it
                self.command(f"vlan/create {vlan}")
            self.command(f"port/create {port}")
            self.command(f"port/setvlan {port} {vlan}")
            self.plug(f"vde://{self.control}[{port}]", f"tap://{tap}")
        deadline = time.monotonic() + 10
        with IPRoute() as ipr:
            while not ipr.link_lookup(ifname=tap):
                if time.monotonic() > deadline:
                    raise NetworkSetupFailed(f"VLAN {vlan}: vde_plug made no tap {tap}")
                time.sleep(0.02)
            [index] = ipr.link_lookup(ifname=tap)
            [master] = ipr.link_lookup(ifname=bridge)
            ipr.link("set", index=index, master=master, state="up")
        return tap

    def trunk(self, port: int, vlans: Collection[int]) -> None:
        """Make ``port`` (a wire's) carry ``vlans`` tagged."""
        self.command(f"port/create {port}")
        for vlan in vlans:
            self.command(f"vlan/addport {vlan} {port}")

    def plug(self, *urls: str, pipe_to: list[str] | None = None) -> None:
        """Run ``vde_plug URL...`` (or, with ``pipe_to``, ``dpipe vde_plug URL =
        COMMAND``: a wire over another program's stdin and stdout) until stop."""
        argv = ["vde_plug", *urls]
        if pipe_to:
            argv = ["dpipe", *argv, "=", *pipe_to]
        self.plugs.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                process_group=0,  # a group of its own: dpipe's children go with it
            )
        )

    def stop(self) -> None:
        for plug in self.plugs:
            _end(plug, functools.partial(os.killpg, plug.pid))
        self.plugs = []
        if self.process is not None:
            _end(self.process, self.process.send_signal)
            self.process = None


def _end(process: subprocess.Popen[bytes], send: Callable[[int], None]) -> None:
    """SIGTERM, and SIGKILL if it is still there after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            send(sig)
        try:
            process.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def _prompted(channel: socket.socket) -> str:
    """What the switch says until its prompt."""
    said = b""
    while not said.endswith(b"vde$ "):
        chunk = channel.recv(65536)
        if not chunk:
            break
        said += chunk
    return said.decode(errors="replace").removesuffix("vde$ ")
