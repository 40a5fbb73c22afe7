"""An instance's disks: a copy-on-write overlay of the cached root, plus ephemeral and swap.

The instance type's disk is split the way Eucalyptus split it: the root image keeps its own
size, swap takes ``swap_mb``, and the ephemeral disk (ext4, as EC2 delivers it) gets the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mallee.common import host
from mallee.common.errors import InvalidParameter
from mallee.nc.domain import DiskSpec

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class DiskLayout:
    root_bytes: int
    ephemeral_bytes: int
    swap_bytes: int


def image_info(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` read as ``fmt`` (never probed: a raw image could
    carry a qcow2 header). A file that is not ``fmt`` raises HostCommandFailed."""
    info: dict[str, Any] = json.loads(
        host.run("qemu-img", "info", "--output=json", "-f", fmt, str(path))
    )
    return info


def external_files(info: dict[str, Any]) -> list[str]:
    """Files other than itself that an image makes QEMU open (backing or data file)."""
    data = info.get("format-specific", {}).get("data", {})
    return [f for f in (info.get("backing-filename"), data.get("data-file")) if f]


def layout(disk_gb: int, root_bytes: int, swap_mb: int) -> DiskLayout:
    swap = swap_mb * MiB
    ephemeral = disk_gb * GiB - root_bytes - swap
    if ephemeral < 0:
        raise InvalidParameter(
            f"instance type disk of {disk_gb} GiB cannot hold the root image "
            f"({root_bytes // MiB} MiB) and swap ({swap_mb} MiB)"
        )
    return DiskLayout(root_bytes, ephemeral, swap)


def create(
    directory: Path, root_image: Path, root_format: str, disk_gb: int, swap_mb: int
) -> tuple[DiskSpec, ...]:
    """Make the root disk, and the ephemeral and swap disks where the layout gives them
    room, in ``directory``; they appear to the guest in that order (vda, vdb, ...)."""
    sizes = layout(disk_gb, int(image_info(root_image, root_format)["virtual-size"]), swap_mb)
    root = directory / "root.qcow2"
    host.run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        root_format,
        "-b",
        str(root_image),
        str(root),
    )
    disks = [DiskSpec(str(root), "qcow2")]
    if sizes.ephemeral_bytes >= MiB:
        ephemeral = directory / "ephemeral.img"
        with ephemeral.open("wb") as f:
            f.truncate(sizes.ephemeral_bytes)
        host.run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "ephemeral0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            str(ephemeral),
        )
        disks.append(DiskSpec(str(ephemeral), "raw"))
    if sizes.swap_bytes:
        swap = directory / "swap.img"
        with swap.open("wb") as f:
            f.truncate(sizes.swap_bytes)
        host.run("mkswap", "-L", "swap", str(swap))
        disks.append(DiskSpec(str(swap), "raw"))
    return tuple(disks)
