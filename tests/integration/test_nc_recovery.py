"""`kill -9` of `mallee-nc` loses no running instance and orphans nothing."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.daemons import NcDaemon
from tests.support.guest import GuestImage, run_request, wait_for_console

IDS = ("i-00000000000000ec1", "i-00000000000000ec2")


def test_kill9_and_restart(nc_factory: Callable[..., NcDaemon], guest: GuestImage) -> None:
    nc = nc_factory()
    for instance_id in IDS:
        nc.client.call("POST", "/v1/instances", run_request(instance_id, guest))
    wait_for_console(nc.client, IDS[0], "MALLEE-BOOT-OK")

    nc.kill9()
    assert nc.domains() == set(IDS)  # the guests never noticed
    nc.start()

    described = nc.client.call("GET", "/v1/instances")["instances"]
    assert {i["instance_id"]: i["state"]["name"] for i in described} == dict.fromkeys(
        IDS, "running"
    )
    assert nc.client.call("GET", "/v1/resource")["instances"] == 2
    wait_for_console(nc.client, IDS[1], "MALLEE-BOOT-OK")  # the console is still read
    for instance_id in IDS:
        terminated = nc.client.call("DELETE", f"/v1/instances/{instance_id}")
        assert terminated["state"]["name"] == "terminated"
    assert nc.domains() == set()
    assert nc.files() == []


def test_restart_finishes_an_interrupted_launch(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage
) -> None:
    """A launch cut short by kill -9 (record and disks made, domain maybe started) is
    torn down on restart rather than left half-made."""
    nc = nc_factory()
    instance_id = "i-00000000000000ec3"
    nc.client.call("POST", "/v1/instances", run_request(instance_id, guest))
    nc.kill9()
    record = nc.instance_dir / instance_id / "instance.json"
    record.write_text(record.read_text().replace('"state": "running"', '"state": "staging"'))

    nc.start()

    [described] = nc.client.call("GET", "/v1/instances")["instances"]
    assert described["state"]["name"] == "terminated"
    assert "restarted during launch" in described["state_reason"]
    assert nc.domains() == set()
    assert nc.files() == []
