"""A whole EC2 workflow with both aws CLIs, unmodified: Debian's v2 (/usr/bin/aws) and
PyPI's v1 (in its own virtual environment, made by tools/prepare-host), against a real
`mallee-clc`, `mallee-cc` and two `mallee-nc` booting the tiny guest under TCG on a
network whose router redirects 169.254.169.254 to the CLC (``networked_cloud``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.aws import CLIS, Aws
from tests.support.cluster import NetworkedCloud
from tests.support.ec2 import new_public_key
from tests.support.guest import MARKER, wait_until


@pytest.mark.parametrize("version", sorted(CLIS))
def test_a_whole_workflow_with_the_aws_cli(
    version: str,
    networked_cloud: NetworkedCloud,
    tmp_path: Path,
) -> None:
    clc, emi, ncs, *_ = networked_cloud
    clc.admin("user", "create", "alice", "--bundle", str(tmp_path / "alice"))
    aws = Aws(CLIS[version], tmp_path / "alice", clc.url)
    key = tmp_path / "key.pub"
    key.write_bytes(new_public_key())
    aws("import-key-pair", "--key-name", "k", "--public-key-material", f"fileb://{key}")
    aws("create-security-group", "--group-name", "ssh", "--description", "ssh in")
    aws(
        "authorize-security-group-ingress",
        "--group-name",
        "ssh",
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "0.0.0.0/0",
    )
    user_data = "#!/bin/sh\necho hello from the aws CLI\n"
    ran = aws(
        "run-instances",
        "--image-id",
        emi,
        "--count",
        "2",
        "--instance-type",
        "m1.small",
        "--key-name",
        "k",
        "--security-groups",
        "ssh",
        "--user-data",
        user_data,
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
    )
    ids = [i["InstanceId"] for i in ran["Instances"]]
    aws("wait", "instance-running", "--instance-ids", *ids)
    assert sorted(len(nc.domains()) for nc in ncs) == [1, 1]

    for instance_id in ids:
        output = ""

        def booted(instance_id: str = instance_id) -> bool:
            nonlocal output
            answer = aws("get-console-output", "--instance-id", instance_id)
            output = answer.get("Output", "")  # both CLIs decode EC2's base64
            return MARKER in output

        wait_until(booted, 240, f"{MARKER} on the console of {instance_id}")
        assert "mallee-guest: metadata ssh key installed" in output, output
        assert f"mallee-guest: metadata instance-id {instance_id}" in output, output
        assert f"mallee-guest: user-data {len(user_data)} bytes" in output, output

    found = aws(
        "describe-instances",
        "--filters",
        "Name=tag:Name,Values=web",
        "Name=instance-state-name,Values=running",
    )
    assert sorted(i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]) == (
        sorted(ids)
    )
    address = aws("allocate-address")
    assert address["PublicIp"] == "192.0.2.33"
    # this zone's public mode is system: its CC cannot translate, and says so
    with pytest.raises(RuntimeError, match=r"\(UnsupportedOperation\).*public_mode is system"):
        aws("associate-address", "--instance-id", ids[0], "--public-ip", address["PublicIp"])
    [listed] = aws("describe-addresses")["Addresses"]
    assert "InstanceId" not in listed  # undone
    aws("release-address", "--public-ip", address["PublicIp"])
    assert aws("describe-addresses")["Addresses"] == []

    aws("terminate-instances", "--instance-ids", *ids)
    aws("wait", "instance-terminated", "--instance-ids", *ids)
    wait_until(lambda: not any(nc.domains() for nc in ncs), 60, "the domains to go")
    aws("delete-security-group", "--group-name", "ssh")
    aws("delete-key-pair", "--key-name", "k")
    assert aws("describe-key-pairs")["KeyPairs"] == []
