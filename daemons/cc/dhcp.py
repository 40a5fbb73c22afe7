"""The CC's DHCP servers: one for instances' public NICs (MANAGED and STATIC modes) and
one per VLAN of the private overlay. Each is a dnsmasq of the CC's own, bound to one
interface only, serving exactly the pairs it is given (no address to a MAC it does not
know), and no DNS.

The CC supervises it: starts it with itself (ending one a killed CC left behind, known
by its pid file and command line), starts it again when a poll finds it dead, tells it
of every change (the hosts file rewritten, SIGHUP, ``dhcp_release`` for the pairs given
back, so no stale lease outlives its instance), and stops it when the CC stops. The
leases survive all of this in the lease file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import netaddr
from pyroute2 import IPRoute

from mallee.cc.addresses import AddressPair
from mallee.common import host
from mallee.common.config import ConfigError
from mallee.common.errors import HostCommandFailed, MalleeError

logger = logging.getLogger(__name__)

LEASE_S = 3600  # instances renew at half of it; a CC down that long stops no one
START_TIMEOUT_S = 10.0
HOSTS_FILE, PID_FILE = "hosts", "dnsmasq.pid"


class DhcpFailed(MalleeError):
    """The CC's dnsmasq would not start (another DHCP server on the interface, say)."""

    code = "DhcpFailed"
    status = 500


def interface_address(name: str) -> netaddr.IPNetwork:
    """The IPv4 address and prefix of the CC's public interface."""
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise ConfigError(f"[cc] public_interface: this host has no interface {name!r}")
        for message in ipr.get_addr(index=links[0], family=socket.AF_INET):
            return netaddr.IPNetwork(f"{message.get('IFA_ADDRESS')}/{message['prefixlen']}")
    raise ConfigError(
        f"[cc] public_interface: {name} has no IPv4 address; give it the address the"
        " instances are to route through"
    )


def end_stale(directory: Path) -> None:
    """End the dnsmasq of the pid file in ``directory``, if it is one of a CC (its
    command line names that folder's hosts file): never another program that reused
    the pid."""
    try:
        pid = int((directory / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if f"--dhcp-hostsfile={directory / HOSTS_FILE}".encode() not in cmdline:
        return
    logger.info("ending dnsmasq %d, left by an earlier CC", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class DhcpServer:
    """dnsmasq on ``interface``, whose ``network`` it serves with ``router`` as the
    gateway (none if ""), naming ``dns`` servers, an interface ``mtu`` and ``routes``
    (destination → gateway, option 121) if given."""

    def __init__(
        self,
        directory: Path,
        interface: str,
        network: netaddr.IPNetwork,
        router: str,
        dns: list[str],
        mtu: int | None = None,
        routes: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.interface = interface
        self.network = network
        self.router = router
        self.dns = dns
        self.mtu = mtu
        self.routes = routes or {}
        self.hosts_file = directory / HOSTS_FILE
        self.lease_file = directory / "leases"
        self.pid_file = directory / PID_FILE
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False  # started and not stopped: to be started again if it dies
        self._served: set[AddressPair] = set()

    def _command(self) -> list[str]:
        network = self.network
        command = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-hosts",
            "--no-resolv",
            "--port=0",  # DHCP only
            "--bind-interfaces",
            f"--interface={self.interface}",
            "--except-interface=lo",
            f"--dhcp-range=set:net,{network.network},static,{network.netmask},{LEASE_S}",
            f"--dhcp-hostsfile={self.hosts_file}",
            f"--dhcp-leasefile={self.lease_file}",
            f"--pid-file={self.pid_file}",
            f"--log-facility={self.directory / 'dnsmasq.log'}",
            "--log-dhcp",
        ]
        # no router: the option given empty, else dnsmasq names its own address
        command.append(
            f"--dhcp-option=tag:net,option:router{',' if self.router else ''}{self.router}"
        )
        if self.routes:  # sent unasked: not every client asks for option 121
            routes = ",".join(f"{to},{via}" for to, via in sorted(self.routes.items()))
            command.append(f"--dhcp-option-force=tag:net,option:classless-static-route,{routes}")
        if self.dns:
            command.append(f"--dhcp-option=tag:net,option:dns-server,{','.join(self.dns)}")
        if self.mtu:
            # sent unasked: clients do not ask for it, and must not send larger frames
            command.append(f"--dhcp-option-force=tag:net,option:mtu,{self.mtu}")
        return command

    def start(self, pairs: Iterable[AddressPair]) -> None:
        """Serve ``pairs``; a dnsmasq a killed CC left is ended first (its leases stay)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # dnsmasq reads the hosts file as its own user
        with self._lock:
            end_stale(self.directory)
            self._write_hosts(set(pairs))
            self._wanted = True
            self._spawn()

    def _write_hosts(self, pairs: set[AddressPair]) -> None:
        lines = "".join(f"{p.mac},{p.address}\n" for p in sorted(pairs))
        staged = self.hosts_file.with_suffix(".new")
        staged.write_text(lines)
        staged.chmod(0o644)
        staged.replace(self.hosts_file)
        self._served = pairs

    def _spawn(self) -> None:
        """Start dnsmasq; back once it serves (it writes its pid file after binding),
        or DhcpFailed with what it said."""
        self.pid_file.unlink(missing_ok=True)
        process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a signal to the CC's group is not one to it
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.pid_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                error = process.communicate()[1].decode(errors="replace").strip()
                raise DhcpFailed(
                    f"dnsmasq did not start on {self.interface}: {error or 'no word why'}"
                )
            time.sleep(0.05)
        self._process = process

    def serve(self, pairs: Iterable[AddressPair]) -> None:
        """Serve exactly ``pairs`` from now on; the leases of pairs no longer served end."""
        wanted = set(pairs)
        with self._lock:
            if wanted == self._served:
                return
            gone = self._served - wanted
            self._write_hosts(wanted)
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGHUP)
            for pair in gone:
                try:
                    host.run("dhcp_release", self.interface, pair.address, pair.mac)
                except HostCommandFailed as e:  # no lease to end: the guest never asked
                    logger.debug("dhcp_release %s: %s", pair.address, e)

    def ensure_running(self) -> None:
        """Start dnsmasq again if it died (or would not start last time), and say why."""
        with self._lock:
            process = self._process
            if not self._wanted or (process is not None and process.poll() is None):
                return
            if process is not None:
                stderr = process.stderr.read() if process.stderr else b""
                error = stderr.decode(errors="replace").strip()
                logger.error(
                    "dnsmasq on %s exited with %s%s; starting it again",
                    self.interface,
                    process.returncode,
                    f": {error}" if error else "",
                )
                self._process = None
            try:
                self._spawn()
            except DhcpFailed as e:
                logger.error("%s; trying again at the next poll", e.message)

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            if self._process is None:
                return
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
            self.pid_file.unlink(missing_ok=True)
