"""A node: the NC and libvirt installed, running, listening, configured."""

from tests.infra.conftest import check_certificate, services

testinfra_hosts = ["ansible://nc"]


def test_mallee_and_libvirt_are_installed(host):
    assert host.file("/usr/local/bin/mallee-nc").linked_to == "/opt/mallee/bin/mallee-nc"
    for package in ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils"):
        assert host.package(package).is_installed, f"{package} is not installed"


def test_units_are_enabled_and_running(host):
    units = [service["unit"] for service in services("nc", host).values()] + ["libvirtd.service"]
    for name in units:
        unit = host.service(name)
        assert unit.is_enabled, f"{name} is not enabled"
        assert unit.is_running, f"{name} is not running"


def test_ports_listen(host):
    for name, service in services("nc", host).items():
        for port in service["ports"]:
            assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, f"{name}: nothing on {port}"


def test_libvirt_answers(host):
    assert "Running hypervisor: QEMU" in host.check_output("virsh -c qemu:///system version")


def test_config_file_is_roots_alone(host, inventory):
    config = host.file(inventory["mallee_config_file"])
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert "[nc]" in config.content_string


def test_certificate_is_valid(host, inventory):
    check_certificate(host, inventory["mallee_tls_dir"] + "/nc.pem", "nc")
