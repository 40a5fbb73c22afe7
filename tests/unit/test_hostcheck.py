"""The NC's start-up check of /dev/kvm against the user libvirt runs QEMU as.

The device is a temporary file and its owner, group and mode are fake stat values, so
these run without root; QEMU's user is ``nobody`` (present on every Debian host).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from mallee.nc.hostcheck import bridge_filtering_problem, kvm_problem, qemu_user_and_group

NOBODY = pwd.getpwnam("nobody")
ROOT_GID = 0
URI = "qemu:///system"


def fake_stat(mode: int, uid: int, gid: int) -> Callable[[Path], os.stat_result]:
    result = os.stat_result((stat.S_IFCHR | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    return lambda _path: result


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.touch()
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "qemu.conf"
    path.write_text('# user = "root"\nuser = "nobody"\ngroup = "nogroup"\n')
    return path


def test_root_only_device_names_the_fix(device: Path, conf: Path) -> None:
    problem = kvm_problem(URI, device, conf, fake_stat(0o600, 0, ROOT_GID))
    assert problem == (
        f"{device} is root:root 0600, which QEMU's user nobody cannot open, so libvirt "
        "re-probes QEMU on every call and each domain takes a minute to start: make it "
        "root:kvm 0660 with nobody in group kvm (tools/prepare-host does both)."
    )


def test_group_member_may_open(device: Path, conf: Path) -> None:
    assert kvm_problem(URI, device, conf, fake_stat(0o660, 0, NOBODY.pw_gid)) is None


def test_group_the_user_is_not_in(device: Path, conf: Path) -> None:
    outsider = max(os.getgrouplist("nobody", NOBODY.pw_gid)) + 1000
    problem = kvm_problem(URI, device, conf, fake_stat(0o660, 0, outsider))
    assert problem is not None and "nobody cannot open" in problem


def test_owner_bits_decide_for_the_owner(device: Path, conf: Path) -> None:
    """The owner gets the owner's bits even when the group's would allow more."""
    problem = kvm_problem(URI, device, conf, fake_stat(0o060, NOBODY.pw_uid, NOBODY.pw_gid))
    assert problem is not None
    assert kvm_problem(URI, device, conf, fake_stat(0o600, NOBODY.pw_uid, ROOT_GID)) is None


def test_group_bits_decide_for_a_member(device: Path, conf: Path) -> None:
    """A member of the device's group gets the group's bits even when others' would allow
    more (as the kernel decides: 0606 shuts the group out)."""
    problem = kvm_problem(URI, device, conf, fake_stat(0o606, 0, NOBODY.pw_gid))
    assert problem is not None and "0606, which QEMU's user nobody cannot open" in problem


def test_open_to_all(device: Path, conf: Path) -> None:
    assert kvm_problem(URI, device, conf, fake_stat(0o666, 0, ROOT_GID)) is None


def test_no_device_no_problem(tmp_path: Path, conf: Path) -> None:
    bad = fake_stat(0o600, 0, ROOT_GID)
    assert kvm_problem(URI, tmp_path / "absent", conf, bad) is None


def test_only_the_local_qemu_driver_is_checked(device: Path, conf: Path) -> None:
    bad = fake_stat(0o600, 0, ROOT_GID)
    assert kvm_problem("qemu+unix:///system?socket=/x", device, conf, bad) is not None
    for uri in ("test:///default", "xen:///system", "qemu+ssh://other/system"):
        assert kvm_problem(uri, device, conf, bad) is None


def test_qemu_as_root_always_opens(device: Path, tmp_path: Path) -> None:
    conf = tmp_path / "root.conf"
    conf.write_text('user = "root"\ngroup = "root"\n')
    assert kvm_problem(URI, device, conf, fake_stat(0o600, 0, ROOT_GID)) is None


def test_numeric_ids_without_passwd_entries(device: Path, tmp_path: Path) -> None:
    conf = tmp_path / "numeric.conf"
    conf.write_text('user = "+54321"\ngroup = "+54322"\n')
    assert kvm_problem(URI, device, conf, fake_stat(0o660, 0, 54322)) is None
    problem = kvm_problem(URI, device, conf, fake_stat(0o660, 0, ROOT_GID))
    assert problem is not None and "user +54321 cannot open" in problem


def test_unknown_user_is_named(device: Path, tmp_path: Path) -> None:
    conf = tmp_path / "typo.conf"
    conf.write_text('user = "libvirt-qemuu"\n')
    problem = kvm_problem(URI, device, conf, fake_stat(0o660, 0, ROOT_GID))
    assert problem is not None
    assert problem.startswith("libvirt runs QEMU as libvirt-qemuu:libvirt-qemu")


def test_defaults_when_qemu_conf_is_silent(tmp_path: Path) -> None:
    assert qemu_user_and_group(tmp_path / "absent.conf") == ("libvirt-qemu", "libvirt-qemu")
    commented = tmp_path / "commented.conf"
    commented.write_text('#user = "root"\n  # group = "root"\n')
    assert qemu_user_and_group(commented) == ("libvirt-qemu", "libvirt-qemu")
    only_group = tmp_path / "group.conf"
    only_group.write_text('group = "kvm"\n')
    assert qemu_user_and_group(only_group) == ("libvirt-qemu", "kvm")


def test_bridge_filtering_names_what_is_missing(tmp_path: Path) -> None:
    setting = tmp_path / "bridge-nf-call-iptables"
    assert "br_netfilter is not loaded" in bridge_filtering_problem(setting)
    setting.write_text("0\n")
    assert "sysctl -w net.bridge.bridge-nf-call-iptables=1" in bridge_filtering_problem(setting)
    setting.write_text("1\n")
    assert bridge_filtering_problem(setting) == ""
