import time
from typing import Any

import pytest

from mallee.common.capacity import VmType
from mallee.common.errors import InvalidParameter
from mallee.nc.model import Failure, ImageRef, Instance, NcState, NetConfig, SecurityGroup
from mallee.nc.service import tap_name

# EC2's InstanceState (name, code) as AWS documents it, the pairs EC2 clients know; the NC
# never stops a guest, so "stopping" (64) and "stopped" (80) are never shown.
EC2_DESCRIBES = {
    NcState.STAGING: ("pending", 0),  # launching: images fetched, disks made
    NcState.RUNNING: ("running", 16),
    NcState.TEARDOWN: ("shutting-down", 32),  # domain destroyed, disks removed
    NcState.TERMINATED: ("terminated", 48),
}


def instance() -> Instance:
    image = ImageRef("emi-12345678", "http://x/i", "sha256:" + "a" * 64, "qcow2")
    kernel = ImageRef("eki-12345678", "http://x/k", "sha256:" + "b" * 64)
    return Instance(
        "i-0123456789abcdef0",
        "r-01234567",
        "alice",
        VmType("m1.small", 1, 256, 2),
        image,
        kernel=kernel,
        net=NetConfig(private_mac="d0:0d:00:00:00:01", vlan=10),
    )


@pytest.mark.parametrize("state", list(NcState))
def test_every_state_is_described_as_ec2_does(state: NcState) -> None:
    """A state added without its EC2 name fails here (KeyError), as describeInstances
    would for a caller."""
    name, code = EC2_DESCRIBES[state]
    view = instance().with_state(state).to_api()
    assert view["state"] == {"name": name, "code": code}
    assert view["nc_state"] == state.value


def test_record_round_trip() -> None:
    failure = Failure("ImageFetchFailed", "http://x/i answered 404", 422)
    original = instance().with_state(NcState.TEARDOWN, "launch failed", failure)
    restored = Instance.from_record(original.to_record())
    assert restored == original
    assert restored.failure == failure and restored.ramdisk is None
    assert restored.net.vlan == 10 and restored.state is NcState.TEARDOWN


def test_api_view_carries_both_states() -> None:
    view = instance().with_state(NcState.TEARDOWN, "user request").to_api()
    assert view["state"] == {"name": "shutting-down", "code": 32}
    assert view["nc_state"] == "teardown"
    assert view["state_reason"] == "user request"
    assert view["kernel_id"] == "eki-12345678" and view["ramdisk_id"] is None
    assert view["image_id"] == "emi-12345678"
    assert view["failure"] is None


def test_terminated_records_when() -> None:
    running = instance().with_state(NcState.RUNNING)
    assert running.terminated_at is None
    before = time.time()
    terminated = running.with_state(NcState.TERMINATED)
    after = time.time()
    assert terminated.terminated_at is not None
    assert before <= terminated.terminated_at <= after


def test_a_launch_failure_stays_visible_once_terminated() -> None:
    """The CC learns why a launch failed from the terminated instance, not only while
    it is torn down."""
    failure = Failure("LaunchFailed", "libvirt refused the domain", 500)
    failed = instance().with_state(NcState.TEARDOWN, "launch failed", failure)
    view = failed.with_state(NcState.TERMINATED, "launch failed").to_api()
    assert view["failure"] == {
        "code": "LaunchFailed",
        "message": "libvirt refused the domain",
        "status": 500,
    }


def test_an_instances_two_nics_have_taps_of_their_own() -> None:
    taps = {tap_name("i-0123456789abcdef0", role) for role in ("public", "private")}
    assert len(taps) == 2
    assert all(len(tap) <= 15 for tap in taps)  # Linux's limit on a link's name
    assert tap_name("i-0123456789abcdef0", "public") != tap_name("i-0123456789abcdef1", "public")


@pytest.mark.parametrize(
    ("rule", "complaint"),
    [
        ({"protocol": "tcp", "from_port": 22, "to_port": 22}, "either a cidr or a group_id"),
        (
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "0.0.0.0/0",
             "group_id": "sg-0000000a"},
            "either a cidr or a group_id",
        ),
        ({"protocol": "tcp", "from_port": 90, "to_port": 80, "cidr": "0.0.0.0/0"}, "ports"),
        ({"protocol": "udp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}, "ports"),
        ({"protocol": "icmp", "from_port": 300, "to_port": -1, "cidr": "0.0.0.0/0"}, "ICMP"),
        ({"protocol": "-1", "cidr": "10.0.0.0/33"}, "10.0.0.0/33"),
    ],
)  # fmt: skip
def test_a_rule_that_means_nothing_is_refused_naming_it(
    rule: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidParameter, match=complaint):
        SecurityGroup.from_api("sg-0000000b", {"ingress": [rule]})


def test_a_rules_cidr_is_kept_as_its_network() -> None:
    group = SecurityGroup.from_api(
        "sg-0000000b", {"egress": [{"protocol": "-1", "cidr": "10.1.2.3/16"}]}
    )
    assert group.egress[0].cidr == "10.1.0.0/16"
