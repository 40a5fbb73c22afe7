"""A cluster head's VDE wires: each wire its CC dialled to a node is connected."""

import re

import pytest

testinfra_hosts = ["ansible://cc"]


def test_every_wire_the_cc_dialled_is_connected(host):
    """The CC dials a node only while one of its VLANs has instances there."""
    dialled = set(
        re.findall(
            r"OPENSSL:([\d.]+):(\d+)", host.check_output("ps -eo args | grep '^socat' || true")
        )
    )
    if not dialled:
        pytest.skip("no VLAN has instances on a node: no wire to check")
    connected = set(
        re.findall(r"\s([\d.]+):(\d+)\s*$", host.check_output("ss -Htn state established"), re.M)
    )
    assert dialled <= connected, f"wires dialled but not connected: {dialled - connected}"
