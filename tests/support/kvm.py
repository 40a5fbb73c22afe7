"""Give /dev/kvm the owner and mode Debian's udev rule would, before tests or benchmarks
use libvirt: without them every domain takes a minute to start (see mallee.nc.hostcheck).
"""

from __future__ import annotations

import grp
import os

from mallee.common import host
from mallee.nc.hostcheck import KVM_DEVICE, kvm_problem, qemu_user_and_group

LOCAL_QEMU = "qemu:///system"


def make_kvm_usable_by_qemu() -> None:
    """``root:kvm 0660`` and QEMU's user in group kvm, as tools/prepare-host makes them;
    nothing is touched when QEMU's user can already open the device (or there is none)."""
    if kvm_problem(LOCAL_QEMU) is None:
        return
    kvm = grp.getgrnam("kvm")  # tools/prepare-host creates it
    user, _group = qemu_user_and_group()
    if user not in kvm.gr_mem:
        host.run("gpasswd", "-a", user, "kvm")
    os.chown(KVM_DEVICE, 0, kvm.gr_gid)
    KVM_DEVICE.chmod(0o660)
    problem = kvm_problem(LOCAL_QEMU)
    if problem is not None:
        raise RuntimeError(f"could not make {KVM_DEVICE} usable by QEMU: {problem}")
