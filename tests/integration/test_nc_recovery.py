"""`kill -9` of `mallee-nc` loses no running instance and orphans nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.daemons import NcDaemon
from tests.support.guest import (
    GuestImage,
    published,
    run_request,
    wait_for_console,
    wait_until,
)
from tests.support.http import serve_directory

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


def test_kill9_during_a_launch(nc_factory: Callable[..., NcDaemon], guest: GuestImage) -> None:
    """kill -9 while runInstance is fetching its image: the restarted NC tears the
    half-made instance down (its record says it never ran) and leaves no partial file."""
    nc = nc_factory()
    instance_id = "i-00000000000000ec3"
    with serve_directory(guest.directory, delay_s=30) as slow:
        body = run_request(instance_id, published(guest.directory, slow.url))
        nc.client.call("POST", "/v1/instances", body)
        wait_until(lambda: bool(slow.gets), 30, "the NC to start downloading")
        assert (nc.instance_dir / instance_id / "instance.json").exists()
        nc.kill9()
        nc.start()

    def described() -> dict[str, Any]:
        [instance] = nc.client.call("GET", "/v1/instances")["instances"]
        return instance

    wait_until(lambda: described()["nc_state"] == "terminated", 30, "recovery's teardown")
    assert described()["state_reason"] == "the node controller restarted during launch"
    assert nc.domains() == set()
    assert nc.files() == []
    assert not list((nc.workdir / "images").glob("*.part"))
    assert nc.client.call("GET", "/v1/resource")["instances"] == 0
