"""Integration tests of the ttylinux guest image (guest/build.sh, guest/README.md).

What they do:
  * build the image twice with guest/build.sh and require byte-identical files,
  * boot it with qemu-system-x86_64 under TCG (no KVM: nested KVM hangs on our machines)
    with user-mode networking whose host address is the EC2 metadata address, serve the
    metadata from a small HTTP server on 127.0.0.1:80, and read the serial console,
  * boot it with root.img attached as a virtio disk.

The boot tests use the build every integration test shares (tests/support/guest.py,
which honours $MALLEE_GUEST_DIR).

Needs root (the builder makes device nodes; port 80), qemu-system-x86_64 and the
builder's host tools; the tests are skipped, saying what is missing, otherwise.

Environment:
  MALLEE_GUEST_DEB_DIR  passed on to guest/build.sh: where downloaded .debs are kept
                        (default: one directory per test session, shared by its builds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import guest
from tests.support.http import FileServer, serve_directory
from tests.support.network import write_metadata

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "guest" / "build.sh"
IMAGE_FILES = ("vmlinuz", "initrd.img", "root.img", "manifest.json")

BUILD_TIMEOUT = 900  # seconds; a build takes ~10 s here, plus the download
BOOT_TIMEOUT = 90  # seconds to MALLEE-BOOT-OK; ~5 s here, but 2 cores and noisy neighbours
MARKER = guest.MARKER  # what guest/rootfs/etc/init.d/rcS prints once per boot

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1hbGxlZS10ZXN0LWtleS1ub3QtcmVhbA mallee-test"
USER_DATA = b"#!/bin/sh\necho mallee user-data test\n" + bytes(range(256))
INSTANCE_ID = "i-0123456789abcdef0"

BUILDER_TOOLS = (
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "depmod",
    "modprobe",
    "cpio",
    "gzip",
    "mke2fs",
    "debugfs",
    "e2fsck",
)
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=TOOL_PATH)


def _missing(tools) -> list[str]:
    return [t for t in tools if _which(t) is None]


def _require_root_and(tools) -> None:
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not running as root")
    missing = _missing(tools)
    if missing:
        reasons.append("missing host tools: " + ", ".join(missing))
    if reasons:
        pytest.skip("ttylinux guest tests need root and " + "; ".join(reasons))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_manifest(directory: Path) -> dict[str, Any]:
    """Return the manifest of a built directory; raise AssertionError if it does not
    describe the files beside it."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files = {f["name"]: f for f in manifest["files"]}
    assert sorted(files) == ["initrd.img", "root.img", "vmlinuz"], files
    for name, entry in files.items():
        path = directory / name
        assert path.stat().st_size == entry["size"], f"{name}: size differs from manifest"
        assert entry["digest"] == "sha256:" + _sha256(path), f"{name}: digest differs from manifest"
    return manifest


def _build(outdir: Path, deb_dir: Path) -> float:
    """Run guest/build.sh OUTDIR; return its duration in seconds."""
    env = dict(os.environ, PATH=TOOL_PATH)
    env.setdefault("MALLEE_GUEST_DEB_DIR", str(deb_dir))
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SH), str(outdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    duration = time.monotonic() - start
    output = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"guest/build.sh failed ({proc.returncode}):\n{output[-6000:]}"
    print(f"guest/build.sh {outdir}: {duration:.1f} s")
    return duration


@pytest.fixture(scope="session")
def deb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ttylinux-debs")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The shared build (tests/support/guest.py), checked against its manifest."""
    _require_root_and(BUILDER_TOOLS)
    directory = guest.build()
    _check_manifest(directory)
    return directory


# --------------------------------------------------------------------------- the VM


class GuestVM:
    """qemu-system-x86_64 under TCG, direct kernel boot, serial console on a unix socket
    read by a thread into ``self.console`` (and the file ``log``)."""

    def __init__(self, image: Path, workdir: Path, extra_args: list[str]):
        self.sock_path = workdir / "serial.sock"
        self.qmp_path = workdir / "qmp.sock"
        self.log_path = workdir / "console.log"
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        cmd = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-chardev",
            f"socket,id=ser0,path={self.sock_path},server=on,wait=on",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel",
            str(image / "vmlinuz"),
            "-initrd",
            str(image / "initrd.img"),
            "-append",
            "console=ttyS0 panic=-1",
            *extra_args,
        ]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> None:
        def connected() -> bool:
            if self.proc.poll() is not None:
                assert self.proc.stdout is not None
                out = self.proc.stdout.read().decode(errors="replace")
                raise AssertionError(f"qemu exited with {self.proc.returncode}:\n{out}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.sock_path))
            except OSError:
                s.close()
                return False
            self._sock = s
            return True

        try:
            guest.wait_until(connected, 30, "qemu to open its serial socket")
        except TimeoutError as e:
            raise AssertionError(str(e)) from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._sock is not None
        with self.log_path.open("wb") as log:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                log.write(data)
                log.flush()
                with self._lock:
                    self._buf += data

    @property
    def console(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace").replace("\r", "")

    def lines(self) -> list[str]:
        return self.console.split("\n")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until a console line matches the regex ``pattern`` (anchored)."""
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for line in self.lines() if (m := rx.fullmatch(line.strip())))
            if not found and self.proc.poll() is not None:
                raise AssertionError(
                    f"qemu exited ({self.proc.returncode}) before {pattern!r}:\n"
                    + self.console[-4000:]
                )
            return bool(found)

        try:
            guest.wait_until(seen, timeout, f"{pattern!r} on the console")
        except TimeoutError as e:
            raise AssertionError(f"{e}:\n{self.console[-4000:]}") from None
        return found[0]

    def send(self, text: str) -> None:
        assert self._sock is not None
        self._sock.sendall(text.encode())

    def qmp(self, command: str) -> dict[str, Any]:
        """Run one QMP command (e.g. system_powerdown) and return its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            answer: dict[str, Any] = {}
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while True:  # skip asynchronous events
                    answer = json.loads(f.readline())
                    if "return" in answer or "error" in answer:
                        break
            return answer

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def boot_vm(guest_image, tmp_path):
    """Factory: boot_vm(extra_qemu_args) -> GuestVM; every VM is killed at teardown."""
    _require_root_and(("qemu-system-x86_64",))
    vms: list[GuestVM] = []

    def start(extra_args: list[str]) -> GuestVM:
        workdir = tmp_path / f"vm{len(vms)}"
        workdir.mkdir()
        vm = GuestVM(guest_image, workdir, extra_args)
        vms.append(vm)
        return vm

    try:
        yield start
    finally:
        for vm in vms:
            vm.stop()


# ------------------------------------------------------------- the metadata service


@pytest.fixture
def metadata_server(tmp_path: Path) -> Iterator[FileServer]:
    """An EC2-like metadata service on 127.0.0.1:80, which QEMU's user-mode network
    (host=169.254.169.254) shows the guest as http://169.254.169.254/."""
    _require_root_and(())
    write_metadata(tmp_path / "metadata", SSH_KEY, USER_DATA, INSTANCE_ID)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 80))
        except OSError as exc:
            pytest.skip(f"cannot serve metadata on 127.0.0.1:80 (port taken?): {exc}")
    with serve_directory(tmp_path / "metadata", port=80) as server:
        yield server


METADATA_NET = [
    "-netdev",
    "user,id=n0,net=169.254.0.0/16,host=169.254.169.254",
    "-device",
    "virtio-net-pci,netdev=n0",
]


# ------------------------------------------------------------------------ the tests


def test_build_is_reproducible(tmp_path_factory, deb_dir):
    """Two builds from the same packages give byte-identical files. (Both are made here:
    a cached build may come from older package versions.)"""
    _require_root_and(BUILDER_TOOLS)
    first = tmp_path_factory.mktemp("ttylinux-a")
    _build(first, deb_dir)
    second = tmp_path_factory.mktemp("ttylinux-b")
    _build(second, deb_dir)
    for name in IMAGE_FILES:
        a, b = first / name, second / name
        assert a.read_bytes() == b.read_bytes(), f"{name} differs between two builds"
    manifest = _check_manifest(second)
    assert manifest["name"] == "ttylinux"
    sizes = {f["name"]: f["size"] for f in manifest["files"]}
    assert sizes["initrd.img"] < 8 * 1024 * 1024, "initrd.img should stay small"
    assert sizes["root.img"] <= 64 * 1024 * 1024, "root.img should stay small"


def test_boot_reaches_marker_with_metadata(boot_vm, metadata_server):
    vm = boot_vm(METADATA_NET)
    vm.wait_for(re.escape(MARKER), BOOT_TIMEOUT)
    print(f"boot to {MARKER}: {time.monotonic() - vm.started:.1f} s")
    lines = [line.strip() for line in vm.lines()]
    assert lines.count(MARKER) == 1, "the marker must be alone on its line, once per boot"

    ip = vm.wait_for(r"mallee-guest: ip (eth\d+|ens\S+|enp\S+) (169\.254\.\d+\.\d+)", 5)
    assert ip.group(2) != "169.254.169.254"
    assert "mallee-guest: metadata ssh key installed" in lines
    assert f"mallee-guest: user-data {len(USER_DATA)} bytes" in lines
    assert f"mallee-guest: metadata instance-id {INSTANCE_ID}" in lines
    assert metadata_server.gets["/latest/meta-data/public-keys/0/openssh-key"] >= 1
    assert metadata_server.gets["/latest/user-data"] >= 1
    # kernel messages reach the serial console too
    assert "Linux version" in vm.console

    # a shell keeps running on the serial console: check the files the metadata produced
    vm.send("\n")
    vm.send("cat /root/.ssh/authorized_keys; wc -c < /run/user-data; echo END-$((6*7))\n")
    vm.wait_for(r"END-42", 30)
    console = vm.console
    assert SSH_KEY in console
    assert re.search(rf"^\s*{len(USER_DATA)}\s*$", console, re.M)


def test_boot_with_root_disk_and_power_button(boot_vm, guest_image):
    """root.img as a virtio disk: the guest mounts it and still reaches the marker
    (snapshot=on keeps the shared image file unmodified). Then the ACPI power button
    (what `virsh shutdown` presses) powers the guest off and QEMU exits."""
    root_img = guest_image / "root.img"
    before = _sha256(root_img)
    # the metadata-style network, but nothing serves 127.0.0.1:80 here: with QEMU's
    # default user network the guest would reach the build host's own cloud metadata
    vm = boot_vm(["-drive", f"file={root_img},format=raw,if=virtio,snapshot=on", *METADATA_NET])
    vm.wait_for(re.escape(MARKER), BOOT_TIMEOUT)
    print(f"boot to {MARKER} with root.img: {time.monotonic() - vm.started:.1f} s")
    lines = [line.strip() for line in vm.lines()]
    assert "mallee-guest: disk /dev/vda mounted at /mnt/root (ext4 rw)" in lines, vm.console[-3000:]
    assert any(re.fullmatch(r"mallee-guest: ip eth0 169\.254\.\d+\.\d+", line) for line in lines)
    vm.send("\ncat /mnt/root/etc/mallee-release; echo END-$((6*7))\n")
    vm.wait_for(r"END-42", 30)
    assert "NAME=ttylinux" in vm.console

    assert "error" not in vm.qmp("system_powerdown")
    try:
        vm.wait_exit(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the guest ignored the power button:\n{vm.console[-3000:]}") from None
    assert "mallee-guest: power button pressed, powering off" in vm.console
    vm.stop()
    assert _sha256(root_img) == before, "root.img changed although attached with snapshot=on"
