"""The cloud head: the CLC installed, running, listening, configured, answering EC2."""

import json

from tests.infra.conftest import check_certificate, services, variables

testinfra_hosts = ["ansible://clc"]


def test_mallee_is_installed(host):
    assert host.file("/usr/local/bin/mallee-clc").linked_to == "/opt/mallee/bin/mallee-clc"
    assert host.run("mallee-clc --help").rc == 0


def test_unit_is_enabled_and_running(host):
    for service in services("clc", host).values():
        unit = host.service(service["unit"])
        assert unit.is_enabled, f"{service['unit']} is not enabled"
        assert unit.is_running, f"{service['unit']} is not running"


def test_ports_listen(host):
    for name, service in services("clc", host).items():
        for port in service["ports"]:
            assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, f"{name}: nothing on {port}"


def test_config_file_is_roots_alone(host, inventory):
    config = host.file(inventory["mallee_config_file"])
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert "[clc]" in config.content_string


def test_certificate_is_valid(host, inventory):
    check_certificate(host, inventory["mallee_tls_dir"] + "/clc.pem", "clc")


def test_admin_profile_answers_describe_availability_zones(host):
    """The administrator's aws CLI profile reaches the EC2 API and sees every zone."""
    out = host.check_output(
        "/opt/mallee/awscli/bin/aws --profile mallee ec2 describe-availability-zones --output json"
    )
    zones = {z["ZoneName"]: z["State"] for z in json.loads(out)["AvailabilityZones"]}
    expected = {variables(host, cc)["mallee_zone"] for cc in variables(host)["groups"]["cc"]}
    assert zones == dict.fromkeys(expected, "available")
