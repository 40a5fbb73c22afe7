"""Starting a domain through libvirt is quick on this host.

When QEMU's user cannot open /dev/kvm, libvirt re-probes QEMU on every call and a
domain takes 45-95 s to start instead of a fraction of a second; every launch the NC
makes would pay that. The `libvirtd` fixture sets the device right, as
tools/prepare-host does; this test fails if that stops being enough.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import libvirt

from mallee.nc.hostcheck import kvm_problem

START_BOUND_S = 1.0


def bios_only_domain(name: str) -> str:
    """A TCG machine with no disk and no kernel: it starts and stays in its firmware."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices/>
</domain>"""


def test_a_domain_starts_within_a_second(libvirtd: str) -> None:
    assert kvm_problem(libvirtd) is None
    conn = libvirt.open(libvirtd)
    # Once after libvirtd's own start it may probe QEMU for real; that is not the fault.
    conn.getDomainCapabilities(None, "x86_64", None, "qemu")
    name = f"mallee-start-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        domain = conn.createXML(bios_only_domain(name), 0)
        elapsed = time.monotonic() - started
        assert domain.isActive()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByName(name).destroy()
        conn.close()
    assert elapsed <= START_BOUND_S, f"libvirt took {elapsed:.1f} s to start a domain"
