"""A node: the NC and libvirt installed, running, listening, configured."""

from tests.infra.conftest import (
    check_certificate,
    check_config_file,
    check_ports_listen,
    check_units_running,
    units_of,
)

testinfra_hosts = ["ansible://nc"]


def test_mallee_and_libvirt_are_installed(host):
    assert host.file("/usr/local/bin/mallee-nc").linked_to == "/opt/mallee/bin/mallee-nc"
    for package in ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils"):
        assert host.package(package).is_installed, f"{package} is not installed"


def test_units_are_enabled_and_running(host):
    check_units_running(host, [*units_of("nc", host), "libvirtd.service"])


def test_ports_listen(host):
    check_ports_listen(host, "nc")


def test_libvirt_answers(host):
    assert "Running hypervisor: QEMU" in host.check_output("virsh -c qemu:///system version")


def test_config_file_is_roots_alone(host):
    check_config_file(host, "nc")


def test_certificate_is_valid(host, inventory):
    check_certificate(host, inventory["mallee_tls_dir"] + "/nc.pem", "nc")
