"""A real `mallee-nc` boots the project's tiny guest under TCG through its HTTP API."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemons import NcDaemon
from tests.support.guest import GuestImage, run_request, wait_for_console, wait_until
from tests.support.network import MetadataNetwork, metadata_network


def qemu_processes(instance_id: str) -> list[str]:
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if instance_id in line]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[MetadataNetwork]:
    with metadata_network(tmp_path, "ssh-ed25519 AAAAC3Nz mallee-test", b"#!/bin/sh\n") as net:
        yield net


def test_boot_console_and_clean_terminate(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage, network: MetadataNetwork
) -> None:
    nc = nc_factory(public_bridge=network.bridge)
    instance_id = "i-000000000000b0071"
    body = run_request(instance_id, guest, net={"public_mac": "d0:0d:00:00:b0:01"})

    instance = nc.launch(body)

    assert instance["state"] == {"name": "running", "code": 16}
    assert instance["kernel_id"] == guest.kernel["id"]
    output = wait_for_console(nc.client, instance_id, "MALLEE-BOOT-OK")
    # the public NIC on the node's bridge: DHCP, then the metadata service answered
    assert re.search(r"mallee-guest: ip eth0 169\.254\.10\.\d+", output)
    assert "mallee-guest: metadata ssh key installed" in output
    assert f"mallee-guest: user-data {len(network.user_data)} bytes" in output
    [described] = nc.client.call("GET", f"/v1/instances?instance_id={instance_id}")["instances"]
    assert described["nc_state"] == "running"
    assert nc.domains() == {instance_id}
    assert qemu_processes(instance_id)
    assert nc.client.call("GET", "/v1/resource")["instances"] == 1

    terminated = nc.client.call("DELETE", f"/v1/instances/{instance_id}")

    assert terminated["state"] == {"name": "terminated", "code": 48}
    assert nc.domains() == set()
    assert nc.files() == []  # no disk, no console log, no record
    assert not qemu_processes(instance_id)
    assert nc.client.call("GET", "/v1/resource")["instances"] == 0


def test_reboot_boots_again(nc_factory: Callable[..., NcDaemon], guest: GuestImage) -> None:
    nc = nc_factory()
    instance_id = "i-000000000000b0072"
    nc.client.call("POST", "/v1/instances", run_request(instance_id, guest))
    wait_for_console(nc.client, instance_id, "MALLEE-BOOT-OK")

    rebooted = nc.client.call("POST", f"/v1/instances/{instance_id}/reboot")

    assert rebooted["state"]["name"] == "running"
    output = wait_for_console(nc.client, instance_id, "MALLEE-BOOT-OK", count=2)
    assert output.count("MALLEE-BOOT-OK") >= 2
    nc.client.call("DELETE", f"/v1/instances/{instance_id}")
    assert nc.domains() == set() and nc.files() == []


def test_guest_powering_off_is_cleaned_up(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage
) -> None:
    """A guest that powers itself off (here: on an ACPI power button press, as from
    `virsh shutdown`) is found by the monitor and torn down: instance-store semantics."""
    nc = nc_factory()
    instance_id = "i-000000000000b0073"
    nc.client.call("POST", "/v1/instances", run_request(instance_id, guest))
    wait_for_console(nc.client, instance_id, "MALLEE-BOOT-OK")
    subprocess.run(["virsh", "-q", "shutdown", instance_id], check=True, capture_output=True)

    def terminated() -> bool:
        [i] = nc.client.call("GET", f"/v1/instances?instance_id={instance_id}")["instances"]
        return bool(i["state"]["name"] == "terminated")

    wait_until(terminated, 60, "the guest to power off and the monitor to notice")
    [after] = nc.client.call("GET", f"/v1/instances?instance_id={instance_id}")["instances"]
    assert after["state_reason"] == "the guest stopped"
    assert nc.files() == [] and nc.domains() == set()
