"""`mallee-admin` as a cloud's admin uses it: users and their keys (generated, brought
along, rotated, bundled for the aws CLI), a zone's nodes through its CC, and any user's
instances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.cluster import fake_node
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon
from tests.support.guest import wait_until


def rc_keys(text: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in text.splitlines()
        if line.startswith("export ")
    )


def test_keys_generated_brought_rotated_and_bundled(
    clc_factory: Callable[..., ClcDaemon], tmp_path: Path
) -> None:
    clc = clc_factory()
    clc.admin("user", "create", "alice", "--bundle", str(tmp_path / "alice"))
    bundle = tmp_path / "alice"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "aws-config",
        "aws-credentials",
        "ca.pem",
        "mallee.rc",
    ]
    assert {oct(p.stat().st_mode & 0o777) for p in bundle.iterdir() if p.name != "ca.pem"} == {
        "0o600"
    }
    keys = rc_keys((bundle / "mallee.rc").read_text())
    assert keys["AWS_ENDPOINT_URL"] == clc.url
    assert f"endpoint_url = {clc.url}" in (bundle / "aws-config").read_text()
    old = clc.client_of(keys)
    assert old.describe_key_pairs()["KeyPairs"] == []

    new = clc.client_of(rc_keys(clc.admin("user", "rotate-key", "alice")))
    assert new.describe_key_pairs()["KeyPairs"] == []
    with pytest.raises(ClientError) as refused:
        old.describe_key_pairs()
    assert refused.value.response["Error"]["Code"] == "AuthFailure"

    brought = {"id": "AKIAMOVEDFROMAWS0001", "secret": "s3cr3t/FromAnotherCloud+0123456789"}
    clc.admin(
        "user", "create", "bob", "--access-key", brought["id"], "--secret-key", brought["secret"]
    )
    bob = clc.client_of(
        {
            "AWS_ACCESS_KEY_ID": brought["id"],
            "AWS_SECRET_ACCESS_KEY": brought["secret"],
            "AWS_DEFAULT_REGION": "mallee",
        }
    )
    assert bob.describe_key_pairs()["KeyPairs"] == []
    with pytest.raises(RuntimeError, match="exists already"):
        clc.admin(
            "user",
            "add-key",
            "alice",
            "--access-key",
            brought["id"],
            "--secret-key",
            brought["secret"],
        )
    with pytest.raises(RuntimeError, match="16 to 32"):
        clc.admin("user", "add-key", "alice", "--access-key", "short", "--secret-key", "x" * 20)


def test_nodes_through_their_cc_and_any_users_instances(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    nc = fake_node(nc_factory, 2, public_bridge="user")
    cc = cc_factory()
    clc = clc_factory(instance_types=["t1.small 1 128 1"])
    clc.admin("cluster", "add", "zone-a", cc.url)
    clc.admin("node", "add", "zone-a", nc.name, nc.url)
    wait_until(lambda: "\tup\t" in clc.admin("node", "list", "zone-a"), 30, "the node to be up")
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    emi = clc.add_disk("blank", disk)
    ec2 = clc.ec2("carol")
    [instance] = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"]
    instance_id = instance["InstanceId"]

    assert instance_id in clc.admin("instance", "list", "--user", "carol")
    with pytest.raises(RuntimeError, match="not ended"):
        clc.admin("user", "remove", "carol")
    wait_until(lambda: "1 instance" in clc.admin("node", "list", "zone-a"), 30, "the count")
    with pytest.raises(RuntimeError, match="still holds instances"):
        clc.admin("node", "remove", "zone-a", nc.name)

    clc.admin("instance", "terminate", instance_id)

    def ended() -> bool:
        [r] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return bool(r["Instances"][0]["State"]["Name"] == "terminated")

    wait_until(ended, 30, "the admin's terminate to end the instance")
    clc.admin("user", "remove", "carol")
    assert "carol" not in clc.admin("user", "list")
    with pytest.raises(ClientError) as refused:
        ec2.describe_instances()
    assert refused.value.response["Error"]["Code"] == "AuthFailure"
