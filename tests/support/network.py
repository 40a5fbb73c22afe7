"""An isolated instance network for tests: a bridge on the host whose only other member
is a veth into a network namespace serving DHCP (busybox udhcpd) and an EC2-style
metadata service on 169.254.169.254. Nothing leaves the machine, and the host itself
gets no address on it, so the host's own routes (and any real metadata service the
host can reach) are untouched."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def _wait_listening(netns: str, processes: list[subprocess.Popen[bytes]]) -> None:
    """Wait until the DHCP and metadata servers listen in ``netns``, so that a guest
    booting next is answered."""
    wanted = {f"udp:{DHCP_PORT}", f"tcp:{HTTP_PORT}"}
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
        _wait_listening(netns, processes)
        yield MetadataNetwork(bridge, ssh_key, user_data)
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for argv in (("link", "del", bridge), ("link", "del", veth), ("netns", "del", netns)):
            with contextlib.suppress(HostCommandFailed):  # what a failed setup never made
                host.run("ip", *argv)
