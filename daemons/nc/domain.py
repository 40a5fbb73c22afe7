"""A typed description of a libvirt domain and the one function that renders it.

No libvirt and no Flask here: the renderer is pure, so golden files pin its output and
libvirt's test driver checks that libvirt accepts it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

VIRT_TYPES = ("kvm", "qemu", "xen")
DISK_FORMATS = ("raw", "qcow2")
METADATA_NS = "https://mallee.dev/xmlns/nc/1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str = "qcow2"

    def __post_init__(self) -> None:
        if self.format not in DISK_FORMATS:
            raise ValueError(f"disk format {self.format!r} is not one of {DISK_FORMATS}")
        if not self.path.startswith("/"):
            raise ValueError(f"disk path {self.path!r} is not absolute")


@dataclass(frozen=True)
class NicSpec:
    """A NIC on ``bridge`` through tap ``device``, or on QEMU's user-mode network when
    ``bridge`` is None."""

    mac: str
    bridge: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if not _MAC.match(self.mac):
            raise ValueError(f"MAC {self.mac!r} is not six lower-case hex pairs")


@dataclass(frozen=True)
class DomainSpec:
    name: str
    virt_type: str
    memory_mb: int
    vcpus: int
    node: str
    owner: str = ""
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str = ""
    console_log: str | None = None
    # What the guest's firmware tables say (SMBIOS; not under xen): stock cloud images'
    # cloud-init runs its EC2 data source only where the system UUID and serial begin
    # with "ec2" (docs/architecture.md). Product: the instance type; asset tag: the id.
    product: str = ""

    @property
    def uuid(self) -> str:
        """The domain's UUID (and SMBIOS serial): "ec2", then a digest of its name, so
        one instance keeps one UUID across restarts of its domain and no two share it."""
        digits = "ec2" + hashlib.sha256(self.name.encode()).hexdigest()[:29]
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"domain name {self.name!r} is not a valid name")
        if self.virt_type not in VIRT_TYPES:
            raise ValueError(f"virt type {self.virt_type!r} is not one of {VIRT_TYPES}")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 16:
            raise ValueError(f"memory {self.memory_mb!r} MiB: need an int of at least 16")
        if not isinstance(self.vcpus, int) or self.vcpus < 1:
            raise ValueError(f"vcpus {self.vcpus!r}: need an int of at least 1")
        if self.virt_type == "xen" and not self.kernel:
            raise ValueError("a xen (paravirtual) domain needs a kernel")
        if self.ramdisk and not self.kernel:
            raise ValueError("a ramdisk needs a kernel")
        if not self.disks and not self.kernel:
            raise ValueError("nothing to boot: no disk and no kernel")
        if len(self.disks) > 26:
            raise ValueError("at most 26 disks")

    @property
    def disk_targets(self) -> tuple[tuple[str, DiskSpec], ...]:
        """Device names in order: vda, vdb, ... (xvda, ... under xen)."""
        prefix = "xvd" if self.virt_type == "xen" else "vd"
        return tuple((prefix + chr(ord("a") + i), d) for i, d in enumerate(self.disks))


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render_domain_xml(spec: DomainSpec) -> str:
    return _env.get_template("domain.xml.j2").render(spec=spec, ns=METADATA_NS)
