import pytest

from mallee.nc.hypervisor import choose_virt_type, detect_virt_type, nested_virtualisation

BARE = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n"
NESTED = "processor\t: 0\nflags\t\t: fpu vme vmx sse2 hypervisor lahf_lm\n"


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


def test_xen_uri_means_xen() -> None:
    assert detect_virt_type("xen:///system", lambda: True, lambda: BARE) == "xen"


def test_explicit_choice_and_bad_value() -> None:
    assert choose_virt_type("kvm", "qemu:///system") == "kvm"
    with pytest.raises(ValueError, match="hypervisor = 'vmware'"):
        choose_virt_type("vmware", "qemu:///system")
