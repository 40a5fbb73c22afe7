import subprocess
from pathlib import Path

import pytest

from mallee.common.errors import HostCommandFailed, InvalidParameter
from mallee.nc import disks

MiB, GiB = 1 << 20, 1 << 30


def test_layout_gives_the_rest_to_ephemeral() -> None:
    layout = disks.layout(2, 100 * MiB, 512)
    assert layout == disks.DiskLayout(100 * MiB, 2 * GiB - 612 * MiB, 512 * MiB)


def test_layout_refuses_a_disk_too_small() -> None:
    with pytest.raises(InvalidParameter, match="cannot hold the root image"):
        disks.layout(1, 900 * MiB, 512)


def test_create_makes_overlay_ephemeral_and_swap(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "64M"], check=True)
    made = disks.create(tmp_path, base, "raw", 1, 64)
    assert [Path(d.path).name for d in made] == ["root.qcow2", "ephemeral.img", "swap.img"]
    info = subprocess.run(
        ["qemu-img", "info", str(tmp_path / "root.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"backing file: {base}" in info
    assert (tmp_path / "swap.img").stat().st_size == 64 * MiB
    assert (tmp_path / "ephemeral.img").stat().st_size == GiB - 128 * MiB
    blkid = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", str(tmp_path / "ephemeral.img")],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert blkid == "ext4"


def test_a_file_that_is_not_its_declared_format_fails_without_naming_it(tmp_path: Path) -> None:
    """What images.py turns into ImageRejected: the answer must not show the cache path."""
    not_qcow2 = tmp_path / "sha256-0123.part"
    not_qcow2.write_bytes(b"\0" * 4096)
    with pytest.raises(HostCommandFailed) as caught:
        disks.image_info(not_qcow2, "qcow2")
    assert caught.value.message.startswith("qemu-img failed on this node")
    assert str(tmp_path) not in caught.value.message
    assert "qcow2" in caught.value.stderr  # qemu-img's own words, for the log
