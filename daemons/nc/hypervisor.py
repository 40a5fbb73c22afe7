"""Every libvirt call the NC makes, and the choice of hypervisor.

Domains are transient (``createXML``): when a guest powers off its domain is gone, and the
NC, not libvirt, holds the instance's definition. Each domain carries the NC's metadata
element naming its node, so an NC only ever touches its own domains, even when several
NCs (tests, benchmarks) share one libvirtd or the host runs the site's own VMs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import libvirt

from mallee.common.errors import (
    HypervisorError,
    HypervisorUnavailable,
    IncorrectInstanceState,
    MalleeError,
)
from mallee.nc.domain import METADATA_NS, VIRT_TYPES

logger = logging.getLogger(__name__)

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions


def nested_virtualisation(cpuinfo: str) -> bool:
    """True when this host is itself a guest (the CPU's ``hypervisor`` flag)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and " hypervisor" in f" {line.split(':', 1)[-1]}":
            return True
    return False


def detect_virt_type(
    uri: str,
    kvm_usable: Callable[[], bool] = lambda: os.access("/dev/kvm", os.R_OK | os.W_OK),
    cpuinfo: Callable[[], str] = lambda: Path("/proc/cpuinfo").read_text(),
) -> str:
    """The domain type for ``hypervisor = "auto"``.

    KVM only on bare metal: nested KVM may accept a VM and then hang its guest at boot
    (measured on the build machines), so a host that is itself a guest uses TCG unless
    the admin sets ``hypervisor = "kvm"``.
    """
    if uri.startswith(("xen:", "libxl:")):
        return "xen"
    if kvm_usable() and not nested_virtualisation(cpuinfo()):
        return "kvm"
    return "qemu"


def choose_virt_type(configured: str, uri: str) -> str:
    if configured == "auto":
        return detect_virt_type(uri)
    if configured not in VIRT_TYPES:
        raise ValueError(f"hypervisor = {configured!r}: choose auto or one of {VIRT_TYPES}")
    return configured


class Hypervisor:
    """libvirt for one node. The connection is made on first use and made again after
    libvirtd went away; ``problem`` says why libvirt does not answer ("" while it does)."""

    def __init__(self, uri: str, node: str) -> None:
        self.uri = uri
        self.node = node
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self.problem = ""

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as e:
                    self._conn = None
                    if not self.problem:
                        logger.error("libvirt at %s does not answer: %s", self.uri, e)
                    self.problem = f"libvirt at {self.uri} does not answer: {e}"
                    raise HypervisorUnavailable(self.problem) from e
                if self.problem:
                    logger.info("libvirt at %s answers again", self.uri)
                self.problem = ""
            return self._conn

    def check(self) -> None:
        """Raise HypervisorUnavailable unless libvirt answers now."""
        self._connection()

    def _failed(self, e: libvirt.libvirtError, what: str) -> MalleeError:
        """The error for a failed call: libvirt gone away, or libvirt's refusal."""
        with self._lock:
            alive = self._conn is not None and self._conn.isAlive()
        if not alive:
            with self._lock:
                self.problem = f"libvirt at {self.uri} went away: {e}"
            return HypervisorUnavailable(f"{what}: {self.problem}")
        return HypervisorError(f"{what}: {e}")

    def _own(self, dom: libvirt.virDomain) -> bool:
        """Whether ``dom`` is this node's. Only "no such metadata" or "no such domain"
        mean no: any other error is raised, never read as "not ours" (which would let a
        passing libvirt fault make running guests look gone)."""
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError as e:
            if e.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                libvirt.VIR_ERR_NO_DOMAIN,
            ):
                return False
            raise self._failed(e, "reading the metadata of a domain") from e
        return ElementTree.fromstring(xml).get("node") == self.node

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            dom = self._connection().lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._failed(e, f"looking up {name}") from e
        return dom if self._own(dom) else None

    def start(self, xml: str) -> None:
        try:
            self._connection().createXML(xml, 0)
        except libvirt.libvirtError as e:
            raise self._failed(e, "libvirt refused the domain") from e

    def destroy(self, name: str) -> None:
        """Stop ``name`` at once; nothing to do when it is already gone."""
        dom = self._lookup(name)
        if dom is None:
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() not in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                raise self._failed(e, f"destroying {name}") from e

    def is_active(self, name: str) -> bool:
        dom = self._lookup(name)
        try:
            return dom is not None and bool(dom.isActive())
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._failed(e, f"asking whether {name} runs") from e

    def reset(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise IncorrectInstanceState(f"instance {name} has no running domain")
        try:
            dom.reset()
        except libvirt.libvirtError as e:
            raise self._failed(e, f"resetting {name}") from e

    def active_domains(self) -> set[str]:
        """Names of this node's active (running or paused) domains."""
        try:
            domains = self._connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as e:
            raise self._failed(e, "listing domains") from e
        return {dom.name() for dom in domains if self._own(dom)}
