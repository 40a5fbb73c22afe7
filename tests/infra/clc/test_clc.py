"""The cloud head: the CLC installed, running, listening, configured, answering EC2."""

import json

from tests.infra.conftest import (
    check_certificate,
    check_config_file,
    check_ports_listen,
    check_units_running,
    units_of,
    variables,
)

testinfra_hosts = ["ansible://clc"]


def test_mallee_is_installed(host):
    assert host.file("/usr/local/bin/mallee-clc").linked_to == "/opt/mallee/bin/mallee-clc"
    assert host.run("mallee-clc --help").rc == 0


def test_unit_is_enabled_and_running(host):
    check_units_running(host, units_of("clc", host))


def test_ports_listen(host):
    check_ports_listen(host, "clc")


def test_config_file_is_roots_alone(host):
    check_config_file(host, "clc")


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
