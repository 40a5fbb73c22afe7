"""A cluster head: the CC installed, running, listening, configured, its nodes up."""

from tests.infra.conftest import check_certificate, clc_host, services, variables

testinfra_hosts = ["ansible://cc"]


def test_mallee_is_installed(host):
    assert host.file("/usr/local/bin/mallee-cc").linked_to == "/opt/mallee/bin/mallee-cc"
    assert host.exists("dnsmasq")


def test_unit_is_enabled_and_running(host):
    for service in services("cc", host).values():
        unit = host.service(service["unit"])
        assert unit.is_enabled, f"{service['unit']} is not enabled"
        assert unit.is_running, f"{service['unit']} is not running"


def test_ports_listen(host):
    for name, service in services("cc", host).items():
        for port in service["ports"]:
            assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, f"{name}: nothing on {port}"


def test_config_file_is_roots_alone(host, inventory):
    config = host.file(inventory["mallee_config_file"])
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert "[cc]" in config.content_string


def test_certificate_is_valid(host, inventory):
    check_certificate(host, inventory["mallee_tls_dir"] + "/cc.pem", "cc")


def test_sees_its_nodes_up(host, inventory):
    """Every NC of the zone is registered with this CC and answers its polls."""
    zone = inventory["mallee_zone"]
    expected = {
        name for name in inventory["groups"]["nc"] if variables(host, name)["mallee_zone"] == zone
    }
    listed = clc_host(host).check_output(f"mallee-admin node list {zone}").splitlines()
    health = {line.split("\t")[0]: line.split("\t")[2] for line in listed}
    assert health == dict.fromkeys(expected, "up")
