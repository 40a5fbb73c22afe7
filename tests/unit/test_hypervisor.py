import contextlib
from collections.abc import Iterator

import libvirt
import pytest

from mallee.common.errors import HypervisorError, HypervisorUnavailable, IncorrectInstanceState
from mallee.nc.domain import DiskSpec, DomainSpec, render_domain_xml
from mallee.nc.hypervisor import (
    Hypervisor,
    choose_virt_type,
    detect_virt_type,
    nested_virtualisation,
)

BARE = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n"
NESTED = "processor\t: 0\nflags\t\t: fpu vme vmx sse2 hypervisor lahf_lm\n"
TEST_URI = "test:///default"


def test_hypervisor_flag_means_nested() -> None:
    assert nested_virtualisation(NESTED)
    assert not nested_virtualisation(BARE)
    assert not nested_virtualisation("model name\t: hypervisor-free cpu\nflags\t: fpu\n")


@pytest.mark.parametrize(
    ("kvm", "cpuinfo", "expected"),
    [
        (True, BARE, "kvm"),  # bare metal with /dev/kvm
        (True, NESTED, "qemu"),  # nested: KVM guests may hang at boot, use TCG
        (False, BARE, "qemu"),  # no /dev/kvm
    ],
)
def test_auto_detection(kvm: bool, cpuinfo: str, expected: str) -> None:
    assert detect_virt_type("qemu:///system", lambda: kvm, lambda: cpuinfo) == expected


@pytest.mark.parametrize("uri", ["xen:///system", "libxl:///system"])
def test_xen_uri_means_xen(uri: str) -> None:
    assert detect_virt_type(uri, lambda: True, lambda: BARE) == "xen"


def test_explicit_choice_and_bad_value() -> None:
    assert choose_virt_type("kvm", "qemu:///system") == "kvm"
    with pytest.raises(ValueError, match="hypervisor = 'vmware'"):
        choose_virt_type("vmware", "qemu:///system")


# --------------------------------------------------------- libvirt's test driver


def domain_xml(name: str, node: str) -> str:
    spec = DomainSpec(name, "qemu", 64, 1, node, disks=(DiskSpec("/nowhere/root.img", "raw"),))
    return render_domain_xml(spec)


@pytest.fixture
def two_nodes() -> Iterator[tuple[Hypervisor, Hypervisor]]:
    """Two NCs sharing one libvirtd (the test driver's, shared within this process), each
    with one running domain of its own; whatever is left is destroyed afterwards."""
    mine, theirs = Hypervisor(TEST_URI, "node1"), Hypervisor(TEST_URI, "node2")
    mine.start(domain_xml("i-00000001", "node1"))
    theirs.start(domain_xml("i-00000002", "node2"))
    try:
        yield mine, theirs
    finally:
        conn = libvirt.open(TEST_URI)
        for name in ("i-00000001", "i-00000002"):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()


def test_a_node_sees_and_touches_only_its_own_domains(
    two_nodes: tuple[Hypervisor, Hypervisor],
) -> None:
    mine, theirs = two_nodes
    assert mine.active_domains() == {"i-00000001"}
    assert not mine.is_active("i-00000002")
    mine.destroy("i-00000002")  # not this node's: left running
    assert theirs.is_active("i-00000002")
    with pytest.raises(IncorrectInstanceState, match="i-00000002 has no running domain"):
        mine.reset("i-00000002")
    mine.destroy("i-00000001")
    assert mine.active_domains() == set() and not mine.is_active("i-00000001")
    mine.destroy("i-00000001")  # already gone: nothing to do
    assert theirs.active_domains() == {"i-00000002"}


def test_a_refusal_is_a_hypervisor_error_not_unavailability(
    two_nodes: tuple[Hypervisor, Hypervisor],
) -> None:
    mine, _ = two_nodes
    with pytest.raises(HypervisorError, match="libvirt refused the domain"):
        mine.start(domain_xml("i-00000001", "node1"))  # that name runs already
    assert mine.problem == ""


def test_a_libvirtd_that_does_not_answer_is_named() -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    hypervisor = Hypervisor(uri, "node1")
    with pytest.raises(HypervisorUnavailable, match="/nonexistent/libvirt-sock"):
        hypervisor.check()
    assert hypervisor.problem.startswith(f"libvirt at {uri} does not answer: ")
    with pytest.raises(HypervisorUnavailable):
        hypervisor.active_domains()
