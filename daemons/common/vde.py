"""The private overlay over VDE, the seed's (§2.2): a ``vde_switch`` per host, fast
spanning tree on (redundant wires do not loop), each VLAN's bridge joined to it by a
tap on an access port of that VLAN, and wires between switches on trunk ports, which
carry their VLANs tagged.

A cluster's wires form a star: the controller (the CC) dials each node that carries a
VLAN, over TCP (TLS with the cloud's certificates when ``[common] tls`` is on: a wire
is a trunk into the node's VLANs), and tags on that wire exactly the VLANs the node
carries. A node waits for its controller's wire on port 1 of its switch
(``WIRE_PORT``, TCP ``WIRE_TCP_PORT`` of its overlay address), which carries the
node's VLANs. This is the seed's "one wire to its CC is enough behind a firewall",
and the CC already reaches its nodes (it polls them).

The programs are run, not reimplemented: ``vde_switch``; ``vde_plug`` for taps;
``dpipe vde_plug = socat`` for wires. The switch's console is a pipe its owner holds, so
it ends with its owner, even on ``kill -9``, and everything plugged into it ends with
it; a listener a killed owner left is ended when the next one starts (its command line
names this switch's socket). ``ensure`` (called by the owner's periodic work) starts
again whatever died: the switch with all it had, a wire, a tap, the listener.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from mallee.common.errors import NetworkSetupFailed
from mallee.common.rpc import ClientTLS

logger = logging.getLogger(__name__)

MTU = 1500  # a wire carries whole frames: no overhead to leave room for
WIRE_PORT = 1  # a node's switch port for its controller's wire
WIRE_TCP_PORT = 8776  # where a node waits for that wire (the NC's API is on 8775)
SOCAT = ["socat", "-b", "65536", "-"]  # 64 KiB reads (bench/fig7_network: socat's 8 KiB is slower)
# a wire whose other end vanished (no FIN: a host gone) is hung up within a minute
KEEPALIVE = "keepalive,keepidle=20,keepintvl=10,keepcnt=3"
LISTENER = "listener"


class VdeSwitch:
    """The host's ``vde_switch``, run by its owner and stopped with it. Its console is
    a pipe the owner holds (the switch ends when it closes); commands go through its
    management socket. Plugs (``vde_plug`` and wires) are kept by name."""

    def __init__(self, directory: Path, ports: int = 128) -> None:
        self.directory = directory
        self.control = directory / "ctl"
        self.management = directory / "mgmt"
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None
        self.plugs: dict[str, subprocess.Popen[bytes]] = {}
        self._numbers = itertools.count()

    def url(self, port: int) -> str:
        return f"vde://{self.control}[{port}]"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the switch; sockets an earlier switch left in its folder go first, and
        plugs of it still running (a killed owner's) are ended."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _end_stale_plugs(f"vde://{self.control}[")
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

    def command(self, line: str, done_if: int = 0) -> str:
        """One management command; its output, or NetworkSetupFailed with the switch's
        own words. A refusal with errno ``done_if`` (EEXIST: made already; ENXIO: gone
        already) is taken as done."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
                channel.settimeout(5)
                channel.connect(str(self.management))
                _prompted(channel)  # the banner
                channel.sendall(line.encode() + b"\n")
                answer = _prompted(channel)
        except OSError as e:
            raise NetworkSetupFailed(f"vde_switch: {line}: {e}") from e
        *output, status = answer.rstrip().splitlines() or [""]
        code, _, words = status.partition(" ")
        if code == "1000" or (done_if and code == str(1000 + done_if)):  # 1000 + errno
            return "\n".join(output)
        raise NetworkSetupFailed(f"vde_switch: {line}: {words or 'no answer'}")

    def alive(self, name: str) -> bool:
        plug = self.plugs.get(name)
        return plug is not None and plug.poll() is None

    def join(self, vlan: int, bridge: str, port: int, tap: str = "") -> str:
        """Make switch port ``port`` an access port of ``vlan`` and join ``bridge`` to
        it by a tap (``tap``, else ``mlvd<vlan>``); the tap's name. Idempotent: a tap
        whose plug ended is plugged again."""
        tap = tap or f"mlvd{vlan}"
        self.command(f"vlan/create {vlan}", done_if=errno.EEXIST)
        self.command(f"port/create {port}", done_if=errno.EEXIST)
        self.command(f"port/setvlan {port} {vlan}")
        try:
            with IPRoute() as ipr:
                if not self.alive(tap) or not ipr.link_lookup(ifname=tap):
                    self.unplug(tap)
                    self.plug(self.url(port), f"tap://{tap}", name=tap)
                deadline = time.monotonic() + 10
                while not ipr.link_lookup(ifname=tap):
                    if time.monotonic() > deadline or not self.alive(tap):
                        raise NetworkSetupFailed(f"VLAN {vlan}: vde_plug made no tap {tap}")
                    time.sleep(0.02)
                [index] = ipr.link_lookup(ifname=tap)
                [master] = ipr.link_lookup(ifname=bridge)
                ipr.link("set", index=index, master=master, state="up")
        except (NetlinkError, ValueError) as e:
            raise NetworkSetupFailed(f"VLAN {vlan}: tap {tap} to bridge {bridge}: {e}") from e
        return tap

    def trunk(self, port: int, vlans: Collection[int]) -> None:
        """Make ``port`` (a wire's) carry ``vlans`` tagged (again: idempotent)."""
        self.command(f"port/create {port}", done_if=errno.EEXIST)
        for vlan in vlans:
            self.command(f"vlan/create {vlan}", done_if=errno.EEXIST)
            self.command(f"vlan/addport {vlan} {port}")

    def plug(self, *urls: str, pipe_to: list[str] | None = None, name: str = "") -> None:
        """Run ``vde_plug URL...`` (or, with ``pipe_to``, ``dpipe vde_plug URL =
        COMMAND``: a wire over another program's stdin and stdout) until unplugged, kept
        as ``name``. What it says goes to the owner's log."""
        argv = ["vde_plug", *urls]
        if pipe_to:
            argv = ["dpipe", *argv, "=", *pipe_to]
        self.unplug(name := name or f"plug {next(self._numbers)}")
        self.plugs[name] = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            process_group=0,  # a group of its own: dpipe's children go with it
        )

    def unplug(self, name: str) -> None:
        plug = self.plugs.pop(name, None)
        if plug is not None:
            _end_group(plug)

    def stop(self) -> None:
        for name in list(self.plugs):
            self.unplug(name)
        if self.process is not None:
            _end(self.process, self.process.send_signal)
            self.process = None


class VdeOverlay:
    """The overlay's VDE backend on one host, with what VxlanOverlay offers (``join``,
    ``leave``, ``mtu``, ``local``) and the supervision VXLAN does not need
    (``ensure``, ``stop``). A node (``dials`` false) waits for its controller's wire;
    a controller dials each peer ``join`` names, checking that the peer's certificate
    names ``peer_name(peer)`` (the name its API is reached by)."""

    mtu = MTU

    def __init__(
        self,
        directory: Path,
        local: str,
        tls: ClientTLS | None,
        dials: bool = False,
        prefix: str = "mlvd",
        peer_name: Callable[[str], str] = str,
    ) -> None:
        self.switch = VdeSwitch(directory)
        self.local = local
        self.tls = tls
        self.dials = dials
        self.prefix = prefix
        self.peer_name = peer_name
        # What the switch is to hold; the switch is made to match it (_converge).
        self._bridges: dict[int, str] = {}  # VLAN → its bridge here
        self._wires: dict[str, set[int]] = {}  # peer → the VLANs its wire carries
        self._ports: dict[str, int] = {}  # a tap's or wire's name → its switch port
        self._sound = False  # the switch matched it at the last converge
        self._stopped = False  # the owner is ending: nothing is started again
        self._lock = threading.Lock()

    def device(self, vlan: int) -> str:
        return f"{self.prefix}{vlan}"

    def join(self, vlan: int, bridge: str, peers: Collection[str]) -> None:
        """Join ``bridge`` to the switch on an access port of ``vlan``; a controller
        carries ``vlan`` on its wires to exactly ``peers`` (a node's one wire is its
        controller's, and carries every VLAN it joins)."""
        with self._lock:
            if self._stopped:
                raise NetworkSetupFailed(f"VLAN {vlan}: this daemon is stopping")
            self._bridges[vlan] = bridge
            if self.dials:
                for peer in set(peers) - {self.local}:
                    self._wires.setdefault(peer, set()).add(vlan)
                for peer in sorted(set(self._wires) - set(peers)):
                    self._untag(peer, vlan)
            failed = self._converge(full=not self._sound, vlan=vlan)
            if vlan in failed:
                raise failed[vlan]

    def leave(self, vlan: int) -> None:
        with self._lock:
            self._bridges.pop(vlan, None)
            for peer in sorted(self._wires):
                self._untag(peer, vlan)
            port = self._ports.pop(self.device(vlan), None)
            if self._stopped or not self.switch.running():
                return  # a restarted switch is given only what is left
            self.switch.unplug(self.device(vlan))
            with contextlib.suppress(NetworkSetupFailed):  # an empty VLAN harms no one
                if port is not None:
                    self.switch.command(f"port/remove {port}", done_if=errno.ENXIO)
                if not self.dials:
                    self.switch.command(f"vlan/delport {vlan} {WIRE_PORT}", done_if=errno.ENXIO)
                self.switch.command(f"vlan/remove {vlan}", done_if=errno.ENXIO)
            self._end_idle_wires()

    def ensure(self, bridges: dict[int, str]) -> None:
        """Start again what died (the switch with everything on it, a tap, a wire, the
        listener), and join the VLANs of ``bridges`` (VLAN → its bridge here) not
        joined yet: after the owner's restart, the bridges its instances use. Each
        failure is logged, and tried again at the next call."""
        with self._lock:
            if self._stopped:
                return
            for vlan, bridge in bridges.items():
                if vlan not in self._bridges:
                    self._bridges[vlan] = bridge
                    self._sound = False
            for vlan, error in self._converge(full=not self._sound).items():
                logger.error("VDE: VLAN %s not switched here: %s", vlan or "wires", error.message)

    def stop(self) -> None:
        """End the switch and everything plugged into it, for good."""
        with self._lock:
            self._stopped = True
            self.switch.stop()

    def _converge(self, full: bool, vlan: int = 0) -> dict[int, NetworkSetupFailed]:
        """Make the switch hold what it is to hold: all of it (``full``: after a
        restart or a failure), else only ``vlan`` and the plugs that ended. The
        failures, by VLAN (0: a wire's or the listener's)."""
        failed: dict[int, NetworkSetupFailed] = {}
        if not self.switch.running():
            if self.switch.process is not None:
                logger.warning("vde_switch in %s died; starting it again", self.switch.directory)
            self.switch.stop()  # what was plugged into the dead switch
            try:
                self.switch.start()
                self.switch.command(f"port/create {WIRE_PORT}", done_if=errno.EEXIST)
            except NetworkSetupFailed as e:
                self._sound = False
                return dict.fromkeys([*self._bridges, vlan, 0], e)
            full = True
        for each, bridge in sorted(self._bridges.items()):
            if full or each == vlan or not self.switch.alive(self.device(each)):
                try:
                    tap = self.device(each)
                    self.switch.join(each, bridge, self._port(tap), tap)
                    if not self.dials:
                        self.switch.trunk(WIRE_PORT, [each])
                except NetworkSetupFailed as e:
                    failed[each] = e
        for peer, vlans in sorted(self._wires.items()):
            name = _wire_name(peer)
            if not vlans or not (full or vlan in vlans or not self.switch.alive(name)):
                continue
            try:
                if not self.switch.alive(name):
                    self._dial(peer)
                self.switch.trunk(self._ports[name], vlans)
            except NetworkSetupFailed as e:
                for each in vlans:
                    failed.setdefault(each, e)
        self._end_idle_wires()
        if not self.dials and not self.switch.alive(LISTENER):
            self._listen()
        self._sound = not failed
        return failed

    def _port(self, name: str) -> int:
        """The switch port of tap or wire ``name``; a free one for a new name."""
        if name not in self._ports:
            taken = set(self._ports.values()) | {WIRE_PORT}
            self._ports[name] = min(set(range(1, self.switch.ports)) - taken)
        return self._ports[name]

    def _dial(self, peer: str) -> None:
        """This controller's wire to ``peer`` (dialled again whenever it ended: the node
        was away, or restarted)."""
        name = _wire_name(peer)
        transport = f"TCP:{peer}:{WIRE_TCP_PORT}"
        if self.tls:
            transport = f"OPENSSL:{peer}:{WIRE_TCP_PORT},commonname={self.peer_name(peer)}"
        dial = [*SOCAT, f"{transport},nodelay,{KEEPALIVE}{_tls_options(self.tls)}"]
        self.switch.plug(self.switch.url(self._port(name)), pipe_to=dial, name=name)

    def _untag(self, peer: str, vlan: int) -> None:
        """``vlan`` off the wire to ``peer`` (which no longer carries it)."""
        vlans = self._wires.get(peer, set())
        if vlan not in vlans:
            return
        vlans.discard(vlan)
        port = self._ports.get(_wire_name(peer))
        if port is not None and self.switch.running() and not self._stopped:
            try:
                self.switch.command(f"vlan/delport {vlan} {port}", done_if=errno.ENXIO)
            except NetworkSetupFailed as e:  # the peer drops the VLAN's frames anyway
                logger.warning("VDE: VLAN %d stays on the wire to %s: %s", vlan, peer, e.message)

    def _end_idle_wires(self) -> None:
        """Hang up the wires of peers that carry none of this controller's VLANs."""
        for peer in sorted(p for p, vlans in self._wires.items() if not vlans):
            del self._wires[peer]
            name = _wire_name(peer)
            self.switch.unplug(name)
            if (port := self._ports.pop(name, None)) is not None and self.switch.running():
                with contextlib.suppress(NetworkSetupFailed):
                    self.switch.command(f"port/remove {port}", done_if=errno.ENXIO)

    def _listen(self) -> None:
        """A node's wait for its controller's wire (one at a time: a listener ends with
        its connection, and is started again)."""
        transport = "OPENSSL-LISTEN" if self.tls else "TCP-LISTEN"
        address = f"{transport}:{WIRE_TCP_PORT},bind={self.local},reuseaddr,nodelay"
        listen = [*SOCAT, f"{address},{KEEPALIVE}{_tls_options(self.tls)}"]
        self.switch.plug(self.switch.url(WIRE_PORT), pipe_to=listen, name=LISTENER)


def _wire_name(peer: str) -> str:
    return f"wire {peer}"


def _tls_options(tls: ClientTLS | None) -> str:
    """socat's options for a wire whose two ends show each other certificates of the
    cloud, as the daemons' API calls do ("" without TLS)."""
    if tls is None:
        return ""
    return f",cert={tls.cert},key={tls.key},cafile={tls.ca_cert},verify=1"


def _end_stale_plugs(marker: str) -> None:
    """End the process groups of plugs whose command line names ``marker`` (this
    switch's socket: proof they are this owner's), left by an owner killed before."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker not in cmdline:
                continue
            pid = int(entry.name)
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            logger.info("ended a plug an earlier owner left: %s", cmdline.strip())
        except (OSError, ValueError):
            continue  # gone meanwhile


def _end_group(process: subprocess.Popen[bytes]) -> None:
    _end(process, functools.partial(os.killpg, process.pid))


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
