"""A cluster head: the CC installed, running, listening, configured, its nodes up."""

from tests.infra.conftest import (
    check_certificate,
    check_config_file,
    check_ports_listen,
    check_units_running,
    clc_host,
    units_of,
    variables,
)

testinfra_hosts = ["ansible://cc"]


def test_mallee_is_installed(host):
    assert host.file("/usr/local/bin/mallee-cc").linked_to == "/opt/mallee/bin/mallee-cc"
    assert host.exists("dnsmasq")


def test_unit_is_enabled_and_running(host):
    check_units_running(host, units_of("cc", host))


def test_ports_listen(host):
    check_ports_listen(host, "cc")


def test_config_file_is_roots_alone(host):
    check_config_file(host, "cc")


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
