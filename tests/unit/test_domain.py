"""Domain XML: golden files pin the output; libvirt's test driver checks libvirt takes it.

Regenerate the golden files with ``MALLEE_REGEN_GOLDEN=1 pytest tests/unit/test_domain.py``
and review the diff.
"""

import os
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from mallee.nc.domain import METADATA_NS, DiskSpec, DomainSpec, NicSpec, render_domain_xml

DATA = Path(__file__).parent / "data"

DISKS = (
    DiskSpec("/var/lib/mallee/nc/instances/i-0123456789abcdef0/root.qcow2"),
    DiskSpec("/var/lib/mallee/nc/instances/i-0123456789abcdef0/ephemeral.img", "raw"),
    DiskSpec("/var/lib/mallee/nc/instances/i-0123456789abcdef0/swap.img", "raw"),
)
NICS = (NicSpec("d0:0d:12:34:56:78", "br0"), NicSpec("d0:0d:12:34:56:79", "mlvlan10"))


def spec(virt_type: str, **changes: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": "i-0123456789abcdef0",
        "virt_type": virt_type,
        "memory_mb": 256,
        "vcpus": 1,
        "node": "node1",
        "owner": "alice",
        "disks": DISKS,
        "nics": NICS,
        "kernel": "/var/lib/mallee/nc/images/kernel",
        "ramdisk": "/var/lib/mallee/nc/images/ramdisk",
        "cmdline": "console=ttyS0 root=/dev/vda",
        "console_log": "/var/lib/mallee/nc/instances/i-0123456789abcdef0/console.log",
    }
    values.update(changes)
    return DomainSpec(**values)  # type: ignore[arg-type]


CASES = {
    "qemu-kernel": spec("qemu"),
    "kvm-kernel": spec("kvm"),
    "kvm-diskboot": spec("kvm", kernel=None, ramdisk=None, nics=(NicSpec("d0:0d:00:00:00:01"),)),
    "xen-pv": spec("xen", cmdline="root=/dev/xvda console=hvc0", console_log=None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    xml = render_domain_xml(CASES[name])
    golden = DATA / f"domain-{name}.xml"
    if os.environ.get("MALLEE_REGEN_GOLDEN"):
        golden.write_text(xml)
    assert golden.exists(), f"{golden} is missing: run with MALLEE_REGEN_GOLDEN=1 and review it"
    assert xml == golden.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_libvirt_accepts(name: str) -> None:
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(render_domain_xml(CASES[name]))
    try:
        defined = ElementTree.fromstring(dom.XMLDesc())
        assert defined.get("type") == CASES[name].virt_type
        assert len(defined.findall("./devices/disk")) == 3
        meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        assert ElementTree.fromstring(meta).get("node") == "node1"
    finally:
        dom.undefine()


def test_same_spec_same_bytes() -> None:
    assert render_domain_xml(spec("qemu")) == render_domain_xml(spec("qemu"))


def test_xen_is_paravirtual() -> None:
    root = ElementTree.fromstring(render_domain_xml(CASES["xen-pv"]))
    assert root.findtext("./os/type") == "linux"
    assert [t.get("dev") for t in root.iter("target") if t.get("bus")] == ["xvda", "xvdb", "xvdc"]


def test_values_are_escaped() -> None:
    xml = render_domain_xml(spec("qemu", owner="a'<b>&", cmdline="x=<y>"))
    root = ElementTree.fromstring(xml)
    assert root.find("./metadata/*").get("owner") == "a'<b>&"  # type: ignore[union-attr]
    assert root.findtext("./os/cmdline") == "x=<y>"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory_mb": 8}, "memory"),
        ({"memory_mb": 256.0}, "memory"),
        ({"vcpus": 0}, "vcpus"),
        ({"name": "bad name"}, "domain name"),
        ({"kernel": None, "ramdisk": None, "disks": ()}, "nothing to boot"),
        ({"kernel": None}, "ramdisk needs a kernel"),
    ],
)
def test_bad_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec("qemu", **changes)


def test_unknown_virt_type() -> None:
    with pytest.raises(ValueError, match="virt type"):
        spec("lxc")


def test_xen_needs_a_kernel() -> None:
    with pytest.raises(ValueError, match="xen"):
        spec("xen", kernel=None, ramdisk=None)


def test_bad_nic_and_disk() -> None:
    with pytest.raises(ValueError, match="MAC"):
        NicSpec("D0:0D:12:34:56:78")
    with pytest.raises(ValueError, match="format"):
        DiskSpec("/x", "vmdk")
    with pytest.raises(ValueError, match="absolute"):
        DiskSpec("x.qcow2")
