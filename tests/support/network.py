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

METADATA_IP = "169.254.169.254"


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


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


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
        _ip("netns", "add", netns)
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", veth, "master", bridge, "up")
        _ip("link", "set", peer, "netns", netns)
        _ip("-n", netns, "addr", "add", f"{METADATA_IP}/16", "dev", peer)
        _ip("-n", netns, "link", "set", peer, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
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
                    "80",
                    "--bind",
                    METADATA_IP,
                    "--directory",
                    str(root),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)  # let both bind before a guest asks
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        yield MetadataNetwork(bridge, ssh_key, user_data)
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
