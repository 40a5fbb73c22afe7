"""The project's tiny guest ("ttylinux", built by guest/build.sh) for tests and benchmarks.

Built once per content of guest/ into /var/tmp (0755, so QEMU's user can read it), or
taken from ``$MALLEE_GUEST_DIR`` when that holds a build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from mallee.common import host
from mallee.common.rpc import RpcClient

REPO = Path(__file__).parents[2]
GUEST_SOURCES = REPO / "guest"
MARKER = "MALLEE-BOOT-OK"


DEBIAN_SOURCES = GUEST_SOURCES / "debian"


def _sources_digest(folder: Path = GUEST_SOURCES, leave_out: Path | None = DEBIAN_SOURCES) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if leave_out is not None and path.is_relative_to(leave_out):
            continue
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _built(script: Path, out: Path, given: str | None, timeout_s: float) -> Path:
    """``given`` when that folder holds a build, else ``out``, made by ``script`` unless
    it is there already (its name carries the digest of its sources)."""
    if given and (Path(given) / "manifest.json").exists():
        return Path(given)
    if not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        host.run(str(script), str(out), timeout_s=timeout_s)
    out.chmod(0o755)
    return out


def build() -> Path:
    """A folder with vmlinuz, initrd.img, root.img and manifest.json."""
    out = Path(f"/var/tmp/mallee-guest-{_sources_digest()}")
    return _built(GUEST_SOURCES / "build.sh", out, os.environ.get("MALLEE_GUEST_DIR"), 600)


def build_debian() -> Path:
    """The Debian 12 cloud-init image (guest/debian/build.sh: about 90 s, from the
    Debian mirror), built once per content of guest/debian into /var/tmp, or taken from
    ``$MALLEE_DEBIAN_DIR`` when that holds a build."""
    out = Path(f"/var/tmp/mallee-debian-{_sources_digest(DEBIAN_SOURCES, None)}")
    return _built(DEBIAN_SOURCES / "build.sh", out, os.environ.get("MALLEE_DEBIAN_DIR"), 1800)


@dataclass(frozen=True)
class GuestImage:
    """The guest's files as the NC's runInstance takes them: id, url, digest."""

    directory: Path
    image: dict[str, str]
    kernel: dict[str, str]
    ramdisk: dict[str, str]


def published(directory: Path, base_url: str) -> GuestImage:
    files = {f["name"]: f for f in json.loads((directory / "manifest.json").read_text())["files"]}

    def ref(prefix: str, name: str) -> dict[str, str]:
        digest = files[name]["digest"]
        return {"id": f"{prefix}-{digest[7:15]}", "url": f"{base_url}/{name}", "digest": digest}

    return GuestImage(
        directory, ref("emi", "root.img"), ref("eki", "vmlinuz"), ref("eri", "initrd.img")
    )


def run_request(instance_id: str, guest: GuestImage, **extra: Any) -> dict[str, Any]:
    """A runInstance body for the tiny guest: 1 core, 128 MiB, 1 GiB disk."""
    return {
        "instance_id": instance_id,
        "reservation_id": "r-0123456789abcdef0",
        "owner_id": "alice",
        "vm_type": {"name": "t1.micro", "cores": 1, "memory_mb": 128, "disk_gb": 1},
        "image": guest.image,
        "kernel": guest.kernel,
        "ramdisk": guest.ramdisk,
        **extra,
    }


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.1)


def wait_for_console(
    client: RpcClient, instance_id: str, text: str, count: int = 1, timeout_s: float = 120
) -> str:
    """Poll getConsoleOutput until ``text`` shows ``count`` times; return the output."""
    output = ""

    def seen() -> bool:
        nonlocal output
        output = client.call("GET", f"/v1/instances/{instance_id}/console")["output"]
        return output.count(text) >= count

    try:
        wait_until(seen, timeout_s, f"{text!r} on the console of {instance_id}")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; the console so far:\n{output[-3000:]}") from None
    return output


class GuestShell:
    """Commands typed on a guest's serial console, where the tiny guest keeps a root
    shell, through libvirt's console stream (as `virsh console` does). What the guest
    says there is read back from the same stream, by a thread that drains it."""

    def __init__(self, libvirt_uri: str, instance_id: str) -> None:
        self.instance_id = instance_id
        self._connection = libvirt.open(libvirt_uri)
        self._stream = self._connection.newStream(0)
        domain = self._connection.lookupByName(instance_id)
        domain.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._output = b""
        self._lock = threading.Lock()
        self._commands = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = self._stream.recv(4096)
            except libvirt.libvirtError:
                return
            if not isinstance(chunk, bytes) or not chunk:
                return
            with self._lock:
                self._output += chunk

    def run(self, command: str, timeout_s: float = 30) -> tuple[int, str]:
        """Run ``command`` in the guest's shell; its exit status and what it printed."""
        self._commands += 1
        mark = f"@@{self._commands}"
        with self._lock:
            start = len(self._output)
        # The shell echoes the line as typed, "$?" unexpanded: only the answer has digits.
        self._stream.send(f'{command}\necho "{mark} $?"\n'.encode())
        answer = re.compile(rf"^{mark} (\d+)\r?$", re.MULTILINE)
        found: re.Match[str] | None = None

        def answered() -> bool:
            nonlocal found
            with self._lock:
                found = answer.search(self._output[start:].decode(errors="replace"))
            return found is not None

        try:
            wait_until(answered, timeout_s, f"`{command}` to finish in {self.instance_id}")
        except TimeoutError as e:
            with self._lock:
                said = self._output[start:].decode(errors="replace")
            raise TimeoutError(f"{e}; its console since:\n{said[-2000:]}") from None
        assert found is not None
        with self._lock:
            text = self._output[start:].decode(errors="replace")
        return int(found.group(1)), text[: found.start()]

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.finish()
        self._connection.close()


def booted_console(ec2: Any, instance_id: str, timeout_s: float = 300) -> str:
    """The instance's console output, once the tiny guest booted (its marker printed)."""
    output = ""

    def booted() -> bool:
        nonlocal output
        output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
        return MARKER in output

    wait_until(booted, timeout_s, f"{MARKER} on the console of {instance_id}")
    return output
