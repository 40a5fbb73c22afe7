"""Real mallee daemons for tests and benchmarks: a libvirtd, the cloud's PKI, and
`mallee-nc` processes under gunicorn whose every answer is checked against the NC's
OpenAPI document."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import boto3
import botocore.config
import libvirt
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from mallee.cc import peering, privatenet
from mallee.common import host, nftables, tls
from mallee.common.rpc import ClientTLS, RpcClient
from mallee.nc.domain import METADATA_NS
from mallee.nc.service import FIREWALL_FILE
from mallee.nc.store import MARKER, RECORD
from tests.support.guest import wait_until
from tests.support.network import inside

REPO = Path(__file__).parents[2]
OPENAPI = {
    component: OpenAPI.from_file_path(str(REPO / "daemons" / component / "openapi.yaml"))
    for component in ("nc", "cc")
}
LIBVIRT_URI = "qemu:///system"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions


def libvirt_answers(uri: str = LIBVIRT_URI) -> bool:
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def start_libvirtd() -> list[int]:
    """Start virtlogd and libvirtd (no systemd on these machines); return their pids."""
    for tool in ("virtlogd", "libvirtd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run tools/prepare-host")
    Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)
    pids = []
    for daemon in ("virtlogd", "libvirtd"):
        pidfile = Path(f"/run/mallee-test-{daemon}.pid")
        host.run(daemon, "-d", "-p", str(pidfile))
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids.append(int(pidfile.read_text()))
    deadline = time.monotonic() + 30
    while not libvirt_answers():
        if time.monotonic() > deadline:
            log = Path("/var/log/libvirt/libvirtd.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"libvirtd did not answer in 30 s (tools/prepare-host?)\n{tail}")
        time.sleep(0.2)
    return pids


class PrivateLibvirtd:
    """A libvirtd of a test's own, to kill and start again without touching the host's
    libvirtd or other tests. It runs in a mount namespace whose /run/libvirt,
    /var/lib/libvirt and /var/cache/libvirt are folders of the test, and its URI names
    its socket."""

    def __init__(self, workdir: Path, netns: str = "") -> None:
        self.netns = netns  # a host of the test bed it runs in: its guests' taps are there
        self.root = workdir / "libvirtd"
        self.uri = f"qemu:///system?socket={self.root}/run/libvirt-sock"
        self.log = self.root / "libvirtd.log"
        self.process: subprocess.Popen[bytes] | None = None
        for folder in ("run", "lib", "cache"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        mounts = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt"}
        script = "".join(f"mount --bind {self.root / k} {v}; " for k, v in mounts.items())
        pidfile = self.root / "virtlogd.pid"  # virtlogd outlives a killed libvirtd
        script += f"kill -0 $(cat {pidfile} 2>/dev/null) 2>/dev/null || virtlogd -d -p {pidfile}; "
        script += f"exec libvirtd -p {self.root}/libvirtd.pid"
        in_netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*in_netns, "unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: libvirt_answers(self.uri), 30, f"the private libvirtd ({self.log})")

    def kill9(self) -> None:
        """libvirtd dies; its guests and virtlogd run on, as on a real host."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Destroy its guests, then stop libvirtd and virtlogd."""
        if self.process is not None and self.process.poll() is None:
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
            conn.close()
            self.process.terminate()
            self.process.wait(15)
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            os.kill(int((self.root / "virtlogd.pid").read_text()), signal.SIGTERM)


def stop_pids(pids: list[int]) -> None:
    for pid in reversed(pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


@dataclass(frozen=True)
class Pki:
    ca: Path
    nc: tuple[Path, Path]  # the NCs' server certificate and key
    cc_server: tuple[Path, Path]  # the CC's, which it also shows its NCs as their client
    cc: ClientTLS  # the CC as a client: the only role an NC serves
    clc: ClientTLS  # the CLC as a client: a role the CC serves
    other_nc: ClientTLS  # a valid certificate of this cloud, of a role the NC refuses
    foreign: ClientTLS  # a "cc" certificate from another CA


# The addresses of the test bed's hosts (tests/support/hosts.py) on its underlay, and
# the test's own there (where a CLC serves them).
TEST_BED_HOSTS = [f"10.99.0.{n}" for n in range(2, 10)]
TEST_BED_HERE = "10.99.0.1"
TEST_BED_HEADS = ["10.98.0.1", "10.98.0.2"]  # head nodes, where a CC may serve


def make_pki(d: Path) -> Pki:
    tls.create_ca(d)
    ca = str(d / "ca.pem")

    def client(name: str, role: str, ca_dir: Path = d) -> ClientTLS:
        cert, key = tls.issue(ca_dir, ca_dir, name, role, ["localhost"])
        return ClientTLS(ca, str(cert), str(key))

    tls.create_ca(d / "foreign")
    cc_server = tls.issue(d, d, "cc-test", "cc", ["localhost", "127.0.0.1", *TEST_BED_HEADS])
    return Pki(
        ca=d / "ca.pem",
        nc=tls.issue(d, d, "nc-test", "nc", ["localhost", "127.0.0.1", *TEST_BED_HOSTS]),
        cc_server=cc_server,
        cc=ClientTLS(ca, str(cc_server[0]), str(cc_server[1])),
        clc=client("clc-test", "clc"),
        other_nc=client("nc-other", "nc"),
        foreign=client("cc-rogue", "cc", d / "foreign"),
    )


def checked_client(
    component: str, url: str, tls_files: ClientTLS | None, **kwargs: Any
) -> RpcClient:
    """An RpcClient whose every answer must match ``component``'s OpenAPI document."""
    client = RpcClient(url, tls_files, **kwargs)
    if component not in OPENAPI:  # no internal JSON API (the CLC's is EC2's)
        return client

    def validate(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        OPENAPI[component].validate_response(
            RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
        )

    client.session.hooks["response"].append(validate)
    return client


def pids_of(pattern: str) -> list[int]:
    """The pids of processes whose command line matches ``pattern`` (pgrep -f)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except (ConnectionRefusedError, TimeoutError):
        return False


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class Daemon:
    """One `mallee-<component>` process with its own config file, under gunicorn."""

    component: ClassVar[str]

    def __init__(
        self,
        workdir: Path,
        pki: Pki,
        server_cert: tuple[Path, Path],
        client_tls: ClientTLS,
        settings: dict[str, Any],
    ) -> None:
        self.workdir = workdir
        # In a network namespace of the test bed (a host of its own), at its address.
        self.netns: str = settings.pop("netns", "")
        self.address: str = settings.pop("address", "127.0.0.1")
        self.port = int(settings.pop("port", 0)) or free_port()  # a restart keeps its port
        self.url = f"https://{self.address}:{self.port}"
        self.log = workdir / f"{self.component}.log"
        section = {
            "listen": self.address,
            "port": self.port,
            "tls_cert": str(server_cert[0]),
            "tls_key": str(server_cert[1]),
            **settings,
        }
        lines = ["[common]", f"ca_cert = {_toml(str(pki.ca))}", f"[{self.component}]"]
        lines += [f"{key} = {_toml(value)}" for key, value in section.items()]
        self.config = workdir / "mallee.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.client = checked_client(self.component, self.url, client_tls, timeout=(3.05, 120.0))

    def start(self) -> None:
        with self.log.open("ab") as log:
            in_netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            command = [sys.executable, "-m", f"mallee.{self.component}", "--config"]
            self.process = subprocess.Popen(
                [*in_netns, *command, str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                # asked in its namespace: a daemon at an address the test's own
                # namespace routes elsewhere (another cluster's worker) answers there
                with inside(self.netns) if self.netns else contextlib.nullcontext():
                    self.client.call("GET", "/healthz", timeout=(1, 2))
                return
            except Exception as e:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    output = self.log.read_text()
                    raise RuntimeError(f"mallee-{self.component} did not come up:\n{output}") from e
                time.sleep(0.2)

    def kill9(self) -> None:
        """SIGKILL to every process of the daemon; back once its port refuses callers
        (the worker's listening socket outlives the master by a moment, and takes
        connections it then resets)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        wait_until(
            lambda: not _listening(self.address, self.port), 10, f"port {self.port} to close"
        )

    def ask_to_stop(self) -> None:
        """SIGTERM, not waiting: gunicorn lingers about 2 s for kept-alive callers."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.ask_to_stop()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def cleanup(self) -> None:
        self.stop()


def stop_all(daemons: Sequence[Daemon]) -> None:
    """Clean up after ``daemons`` (callers first), asking them all to stop at once: each
    lingers a moment for its callers, which one after another would add up."""
    for daemon in reversed(daemons):
        daemon.ask_to_stop()
    for daemon in reversed(daemons):
        if daemon.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(15)  # else cleanup's stop kills it
        daemon.cleanup()


class NcDaemon(Daemon):
    """A `mallee-nc` with its own folders and node name. ``workdir`` must be reachable
    by QEMU's user (0755 all the way), unlike pytest's 0700 temporary folders."""

    component = "nc"

    def __init__(self, workdir: Path, pki: Pki, name: str, **settings: Any) -> None:
        self.name = name
        self.instance_dir = workdir / "instances"
        self.libvirt_uri = settings.get("libvirt_uri", LIBVIRT_URI)
        nc = {
            "node_name": name,
            "libvirt_uri": self.libvirt_uri,
            "instance_dir": str(self.instance_dir),
            "image_cache_dir": str(workdir / "images"),
            "swap_mb": 64,
            "monitor_interval_s": 1.0,
            **settings,
        }
        super().__init__(workdir, pki, pki.nc, pki.cc, nc)

    def domains(self) -> set[str]:
        """This node's domains as libvirt itself lists them, running or not."""
        names = set()
        for dom in libvirt.open(self.libvirt_uri).listAllDomains():
            try:
                meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
            except libvirt.libvirtError:
                continue
            if f"node='{self.name}'" in meta or f'node="{self.name}"' in meta:
                names.add(dom.name())
        return names

    def launch(self, body: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
        """runInstance (answered at once, pending), then the launch's outcome: the
        instance once it is running or terminated."""
        pending = self.client.call("POST", "/v1/instances", body)
        assert pending["state"]["name"] == "pending", pending
        path = f"/v1/instances?instance_id={body['instance_id']}"
        outcome: dict[str, Any] = pending

        def settled() -> bool:
            nonlocal outcome
            [outcome] = self.client.call("GET", path)["instances"]
            return outcome["nc_state"] in ("running", "terminated")

        wait_until(settled, timeout_s, f"the launch of {body['instance_id']}")
        return outcome

    def files(self) -> list[str]:
        """What instances left under the instance folder, relative to it: everything
        but the folder's marker, the security groups the node holds, and the records of
        terminated instances (kept for terminated_retention_s)."""
        root = self.instance_dir
        left = []
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_dir() or path.name in (MARKER, FIREWALL_FILE):
                continue
            if path.name == RECORD and json.loads(path.read_text())["state"] == "terminated":
                continue
            left.append(str(path.relative_to(root)))
        return left

    def cleanup(self) -> None:
        """After a test: stop the daemon, remove its firewall tables (a stop keeps them
        for the instances that run on) and destroy whatever domains it left."""
        self.stop()
        for family in ("bridge", "inet"):
            subprocess.run(
                ["nft", "delete", "table", family, nftables.table_name("nc", self.name)],
                capture_output=True,
                check=False,  # none: the node ran no instance, or ended them all
            )
        if not libvirt_answers(self.libvirt_uri):
            return  # a test's private libvirtd, stopped with its guests
        conn = libvirt.open(self.libvirt_uri)
        for name in self.domains():
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()


class CcDaemon(Daemon):
    """A `mallee-cc`, driven as the CLC would drive it."""

    component = "cc"

    def __init__(self, workdir: Path, pki: Pki, **settings: Any) -> None:
        cc = {"state_dir": str(workdir / "cc-state"), "poll_interval_s": 0.5, **settings}
        super().__init__(workdir, pki, pki.cc_server, pki.clc, cc)
        self.state_dir = cc["state_dir"]
        self.peer_address = str(cc.get("overlay_peer_address", ""))
        self.overlay_address = str(cc.get("overlay_address", ""))

    def dnsmasq(self) -> list[int]:
        """The pids of this CC's dnsmasqs, its public network's and its VLANs' (their
        command lines name the CC's state folder)."""
        return pids_of(f"dnsmasq .*--dhcp-hostsfile={self.state_dir}/")

    def cleanup(self) -> None:
        """After a test: stop the daemon, end a dnsmasq a killed one left, and remove
        the VLAN bridges, VXLAN devices and peering and redirect tables a CC keeps for
        running instances (in a namespace of the test bed, they go with the namespace)."""
        self.stop()
        for pid in self.dnsmasq():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.netns:
            return
        prefixes = (privatenet.BRIDGE_PREFIX, privatenet.VXLAN_PREFIX, peering.PREFIX)
        for link in Path("/sys/class/net").iterdir():
            for prefix in prefixes:
                if link.name.startswith(prefix) and link.name[len(prefix) :].isdigit():
                    subprocess.run(["ip", "link", "del", link.name], capture_output=True)
        if self.peer_address:
            table = nftables.table_name("cc_peering", self.peer_address)
            nftables.apply(nftables.remove_table(peering.FAMILY, table))
        if self.overlay_address:  # the VLANs' metadata redirect
            table = nftables.table_name("cc_vlans", self.overlay_address)
            nftables.apply(nftables.remove_table("ip", table))


class ClcDaemon(Daemon):
    """A `mallee-clc` serving EC2 over HTTPS (a certificate of the test CA) with a
    database of its own; its users are made with the real `mallee-admin`."""

    component = "clc"

    def __init__(self, workdir: Path, pki: Pki, **settings: Any) -> None:
        names = ["localhost", "127.0.0.1", TEST_BED_HERE, *TEST_BED_HEADS]
        server = tls.issue(pki.ca.parent, workdir, "clc-test", "clc", names)
        clc = {
            "database_url": f"sqlite:///{workdir / 'clc.db'}",
            "image_dir": str(workdir / "images"),
            "poll_interval_s": 0.5,
            "metadata_port": free_port(),
            **settings,
        }
        super().__init__(workdir, pki, server, pki.clc, clc)
        self.database_url = clc["database_url"]
        self.image_dir = clc["image_dir"]
        self.keys: dict[str, dict[str, str]] = {}
        if "url" not in settings:  # the NCs fetch images from this CLC
            with self.config.open("a") as config:
                config.write(f"url = {_toml(self.url)}\n")
        self.ca = pki.ca

    def admin(self, *args: str) -> str:
        """`mallee-admin ARGS` against this CLC's database; its output."""
        command = [sys.executable, "-m", "mallee.clc.admin", "--config", str(self.config), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"mallee-admin {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def add_image(self, name: str, folder: Path) -> str:
        """A guest built as vmlinuz, initrd.img and root.img in ``folder``, added with
        `mallee-admin image add` as the cloud's image; its emi id."""
        out = self.admin(
            "image",
            "add",
            name,
            "--root",
            str(folder / "root.img"),
            "--kernel",
            str(folder / "vmlinuz"),
            "--ramdisk",
            str(folder / "initrd.img"),
        )
        [machine] = [line.split("\t")[0] for line in out.splitlines() if "\tmachine\t" in line]
        return machine

    def add_disk(self, name: str, disk: Path) -> str:
        """A disk that boots itself, added as the cloud's image; its emi id."""
        return self.admin("image", "add", name, "--disk", str(disk)).split("\t")[0]

    def ec2(self, user: str, **admin: bool) -> Any:
        """A boto3 EC2 client of a new user of this cloud, as `mallee-admin` made them."""
        rc = self.admin("user", "create", user, *(["--admin"] if admin.get("admin") else []))
        keys = dict(line.removeprefix("export ").split("=", 1) for line in rc.splitlines()[1:])
        self.keys[user] = keys
        return self.client_of(keys)

    def client_of(self, keys: dict[str, str]) -> Any:
        """A boto3 EC2 client of this CLC with a user's keys (``keys`` of another CLC
        on the same database, say)."""
        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name=keys["AWS_DEFAULT_REGION"],
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            verify=str(self.ca),
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )
