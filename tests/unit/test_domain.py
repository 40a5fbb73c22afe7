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
        "product": "m1.small",
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


def test_twenty_six_disks_are_vda_to_vdz() -> None:
    disks = tuple(DiskSpec(f"/d/{n}.img", "raw") for n in range(26))
    root = ElementTree.fromstring(render_domain_xml(spec("kvm", disks=disks)))
    targets = [t.get("dev") for t in root.iter("target") if t.get("bus")]
    assert targets[0] == "vda" and targets[-1] == "vdz" and len(set(targets)) == 26


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
        ({"memory_mb": 8}, r"memory 8 MiB: need an int of at least 16"),
        ({"memory_mb": 256.0}, r"memory 256\.0 MiB: need an int"),
        ({"vcpus": 0}, r"vcpus 0: need an int of at least 1"),
        ({"vcpus": 1.0}, r"vcpus 1\.0: need an int"),
        ({"name": "bad name"}, r"domain name 'bad name' is not a valid name"),
        ({"name": "i-" + "0" * 63}, r"domain name 'i-0+' is not a valid name"),
        ({"kernel": None, "ramdisk": None, "disks": ()}, r"nothing to boot"),
        ({"kernel": None}, r"a ramdisk needs a kernel"),
        ({"disks": DISKS * 9}, r"at most 26 disks"),
    ],
)
def test_bad_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec("qemu", **changes)


def test_unknown_virt_type() -> None:
    with pytest.raises(ValueError, match=r"virt type 'lxc' is not one of"):
        spec("lxc")


def test_xen_needs_a_kernel() -> None:
    with pytest.raises(ValueError, match=r"a xen \(paravirtual\) domain needs a kernel"):
        spec("xen", kernel=None, ramdisk=None)


def test_bad_nic_and_disk() -> None:
    with pytest.raises(ValueError, match=r"MAC 'D0:0D:12:34:56:78' is not six lower-case"):
        NicSpec("D0:0D:12:34:56:78")
    with pytest.raises(ValueError, match=r"disk format 'vmdk' is not one of"):
        DiskSpec("/x", "vmdk")
    with pytest.raises(ValueError, match=r"disk path 'x.qcow2' is not absolute"):
        DiskSpec("x.qcow2")


def test_stock_cloud_init_sees_an_ec2_compatible_platform() -> None:
    """cloud-init's ds-identify takes the platform for EC2 only when the system UUID
    and serial both begin with "ec2" and are equal; libvirt wants the domain's own UUID
    to be the SMBIOS one."""
    xml = render_domain_xml(spec("qemu"))
    uuid = spec("qemu").uuid
    assert uuid.startswith("ec2") and len(uuid) == 36
    assert f"<uuid>{uuid}</uuid>" in xml
    assert f"<entry name='serial'>{uuid}</entry>" in xml
    assert f"<entry name='uuid'>{uuid}</entry>" in xml
    assert "<entry name='asset'>i-0123456789abcdef0</entry>" in xml
    assert "<smbios mode='sysinfo'/>" in xml
    assert spec("qemu", name="i-0123456789abcdef1").uuid != uuid  # each instance its own
    assert "smbios" not in render_domain_xml(CASES["xen-pv"])  # paravirtual: no firmware
