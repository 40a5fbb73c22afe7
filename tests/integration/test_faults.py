"""Faults a cluster admin meets, against real daemons: a bad image, a node dying in the
middle of a launch, a slow image server under many launches, libvirtd going away and
coming back, an instance folder that is not the one the node used before."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mallee.common.rpc import RemoteError, RpcClient
from tests.support.cluster import SMALL, blank_image, counts, fake_node, iid, register, run
from tests.support.daemons import CcDaemon, NcDaemon, Pki, PrivateLibvirtd
from tests.support.guest import wait_until

MICRO = {"name": "t1.micro", "cores": 1, "memory_mb": 64, "disk_gb": 1}


def nodes_of(cc: CcDaemon) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in cc.client.call("GET", "/v1/nodes")["nodes"]}


def micro_run(image: dict[str, str]) -> dict[str, Any]:
    """A runInstance body of one t1.micro instance for an NC."""
    return {
        "instance_id": iid(1),
        "reservation_id": "r-01234567",
        "owner_id": "alice",
        "vm_type": MICRO,
        "image": image,
    }


def remote_error(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        call()
    return caught.value


def test_a_bad_image_gives_one_clear_error_and_keeps_every_node_up(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], tmp_path: Path
) -> None:
    """A raw image declared qcow2: the request's fault, so one 4xx, one download, no
    node marked, nothing tried elsewhere."""
    ncs = [fake_node(nc_factory, 2) for _ in range(3)]
    cc = cc_factory()
    register(cc, *ncs)
    with blank_image(tmp_path / "www") as (server, image):
        error = remote_error(lambda: run(cc, {**image, "format": "qcow2"}, SMALL, iid(1)))
        assert (error.status, error.code) == (422, "ImageRejected")
        assert "declared qcow2" in error.message and str(ncs[0].workdir) not in error.message
        assert server.gets["/blank.raw"] == 1  # fetched by one node only
    assert {n["health"] for n in nodes_of(cc).values()} == {"up"}
    # a poll may have seen the instance staging: its room shows again on the next one
    wait_until(lambda: counts(cc, SMALL)["t1.small"] == (6, 6), 10, "all the room back")
    for nc in ncs:
        assert nc.files() == [] and not list((nc.workdir / "images").iterdir())


def test_a_node_dying_mid_launch_never_runs_the_instance_twice(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], tmp_path: Path
) -> None:
    """The CC cannot know whether the dead node made the instance: it runs it nowhere
    else, tells the caller, and the node's own recovery settles it once it is back."""
    a, b = fake_node(nc_factory, 2), fake_node(nc_factory, 2)
    cc = cc_factory()  # first-fit: the instance goes to a
    register(cc, a, b)
    with blank_image(tmp_path / "www") as (server, image):
        server.delay_s = 30  # the launch sits in its download
        outcome: list[Any] = []

        def launch() -> None:
            try:
                outcome.append(run(cc, image, SMALL, iid(1)))
            except RemoteError as e:
                outcome.append(e)

        thread = threading.Thread(target=launch)
        thread.start()
        wait_until(lambda: bool(server.gets), 30, "a to start downloading")
        a.kill9()
        thread.join(60)
    [error] = outcome
    assert isinstance(error, RemoteError) and error.code == "Unreachable"
    assert f"node {a.name} may still hold {iid(1)}" in error.message
    assert b.client.call("GET", "/v1/instances")["instances"] == []  # never run twice
    assert counts(cc, SMALL)["t1.small"] == (2, 2)  # a is out; b's room is whole

    a.start()

    def settled_on_a() -> bool:
        [instance] = cc.client.call("GET", "/v1/instances")["instances"]
        return instance["node"] == a.name and instance["state"]["name"] == "terminated"

    wait_until(settled_on_a, 30, "a's recovery to show in the CC")
    [instance] = cc.client.call("GET", "/v1/instances")["instances"]
    assert instance["state_reason"] == "the node controller restarted during launch"
    wait_until(lambda: counts(cc, SMALL)["t1.small"] == (4, 4), 10, "no reservation left")


def test_many_cold_launches_leave_polls_and_terminates_answered(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    pki: Pki,
    tmp_path: Path,
) -> None:
    """8 launches at once of an image a congested server trickles out: the node answers
    every poll within the CC's poll timeout and stays up, and a terminate of another
    instance is not queued behind the dispatches (fewer dispatch workers than
    launches here)."""
    poll_timeout_s = 1.0
    nc = fake_node(nc_factory, 9, disk_gb=9)
    cc = cc_factory(poll_timeout_s=poll_timeout_s, dispatch_workers=4)
    register(cc, nc)
    poll = RpcClient(nc.url, pki.cc, timeout=(poll_timeout_s, poll_timeout_s), retries=0)
    with blank_image(tmp_path / "www", size=8 << 20) as (server, image):
        other = server.root / "other.raw"
        other.write_bytes(b"\1" * (1 << 20))
        digest = "sha256:" + hashlib.sha256(other.read_bytes()).hexdigest()
        earlier = {"id": "emi-07e407e4", "url": f"{server.url}/other.raw", "digest": digest}
        run(cc, earlier, SMALL, iid(100))
        # until a poll lists it, the CC may count the earlier instance twice (reserved,
        # and in the node's figures): the batch of 8 would not fit
        wait_until(lambda: counts(cc, SMALL)["t1.small"] == (8, 9), 10, "room for 8")
        server.bytes_per_s = 2 << 20  # about 4 s for the one download of the batch
        outcome: list[Any] = []
        batch = threading.Thread(
            target=lambda: outcome.append(run(cc, image, SMALL, *(iid(n) for n in range(1, 9))))
        )
        batch.start()
        wait_until(lambda: bool(server.gets["/blank.raw"]), 10, "the batch's download")
        started = time.monotonic()
        cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(100)]})
        terminate_s = time.monotonic() - started
        slowest = 0.0
        health = set()
        deadline = time.monotonic() + 120
        while batch.is_alive():
            assert time.monotonic() < deadline, "the batch did not end within 120 s"
            started = time.monotonic()
            poll.call("GET", "/v1/instances")
            poll.call("GET", "/v1/resource")
            slowest = max(slowest, time.monotonic() - started)
            health.add(nodes_of(cc)[nc.name]["health"])
            batch.join(0.2)
    [instances] = outcome
    assert [i["state"]["name"] for i in instances] == ["running"] * 8
    assert server.gets["/blank.raw"] == 1
    assert terminate_s < poll_timeout_s, f"the terminate took {terminate_s:.2f} s"
    assert slowest < poll_timeout_s, f"a poll took {slowest:.2f} s"
    assert health == {"up"}
    ids = [i["instance_id"] for i in instances]
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": ids})
    assert nc.files() == []


def test_terminate_during_a_slow_download_frees_the_core_at_once(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], tmp_path: Path
) -> None:
    nc = fake_node(nc_factory, 1)
    cc = cc_factory(poll_interval_s=0.2)
    register(cc, nc)
    with blank_image(tmp_path / "www", size=64 << 20) as (server, image):
        server.bytes_per_s = 256 << 10  # minutes for the whole image
        outcome: list[Any] = []
        batch = threading.Thread(target=lambda: outcome.append(run(cc, image, SMALL, iid(1))))
        batch.start()
        wait_until(lambda: bool(server.gets), 10, "the download to start")
        assert counts(cc, SMALL)["t1.small"] == (0, 1)

        [result] = cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(1)]})[
            "results"
        ]

        assert result["instance"]["state"]["name"] == "terminated"
        assert nc.client.call("GET", "/v1/resource")["cores_available"] == 1
        batch.join(30)
        [[instance]] = outcome  # the run answers with what became of it
        assert instance["state"]["name"] == "terminated" and instance["failure"] is None
        wait_until(lambda: server.aborted["/blank.raw"] == 1, 10, "the download to stop")
    assert nc.files() == [] and not list((nc.workdir / "images").iterdir())
    wait_until(lambda: counts(cc, SMALL)["t1.small"] == (1, 1), 10, "the CC to count it free")


def test_libvirtd_killed_under_a_running_nc_and_cc(
    private_libvirtd: PrivateLibvirtd,
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    tmp_path: Path,
) -> None:
    private_libvirtd.start()
    nc = nc_factory(libvirt_uri=private_libvirtd.uri)
    cc = cc_factory()
    register(cc, nc)
    with blank_image(tmp_path / "www") as (_, image):
        run(cc, image, MICRO, iid(1))

        private_libvirtd.kill9()

        wait_until(lambda: nodes_of(cc)[nc.name]["health"] == "degraded", 30, "degraded")
        assert "libvirt" in nodes_of(cc)[nc.name]["last_error"]
        [listed] = cc.client.call("GET", "/v1/instances")["instances"]
        assert (listed["state"]["name"], listed["reachable"]) == ("running", False)
        error = remote_error(lambda: run(cc, image, MICRO, iid(2)))
        assert (error.status, error.code) == (503, "ServiceUnavailable")
        assert f"{nc.name} (degraded: " in error.message
        assert nc.log.read_text().count('"POST /v1/instances') == 1  # none sent there

        private_libvirtd.start()

        wait_until(lambda: nodes_of(cc)[nc.name]["health"] == "up", 30, "up again")
        [listed] = cc.client.call("GET", "/v1/instances")["instances"]
        assert (listed["state"]["name"], listed["reachable"]) == ("running", True)
        assert run(cc, image, MICRO, iid(3))[0]["state"]["name"] == "running"
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(1), iid(3)]})
    assert nc.domains() == set() and nc.files() == []


def test_an_nc_starts_without_libvirtd_and_serves_once_it_is_back(
    private_libvirtd: PrivateLibvirtd, nc_factory: Callable[..., NcDaemon], tmp_path: Path
) -> None:
    nc = nc_factory(libvirt_uri=private_libvirtd.uri)  # libvirtd not started yet
    resource = nc.client.call("GET", "/v1/resource")
    assert resource["hypervisor_reachable"] is False
    assert "does not answer" in resource["hypervisor_error"]
    with blank_image(tmp_path / "www") as (_, image):
        body = micro_run(image)
        error = remote_error(lambda: nc.client.call("POST", "/v1/instances", body))
        assert (error.status, error.code) == (503, "HypervisorUnavailable")
        error = remote_error(lambda: nc.client.call("GET", "/v1/instances"))
        assert (error.status, error.code) == (503, "HypervisorUnavailable")

        private_libvirtd.start()

        wait_until(
            lambda: nc.client.call("GET", "/v1/resource")["hypervisor_reachable"],
            30,
            "the NC to find libvirt",
        )
        assert nc.launch(body)["nc_state"] == "running"
    assert "answers again" in nc.log.read_text()
    nc.client.call("DELETE", f"/v1/instances/{iid(1)}")
    assert nc.domains() == set() and nc.files() == []


def test_an_nc_refuses_an_instance_dir_that_is_not_its_own(
    nc_factory: Callable[..., NcDaemon], tmp_path: Path
) -> None:
    """The instance folder is changed or not mounted while guests run: the NC refuses
    to start, says why, and destroys nothing."""
    nc = nc_factory()
    with blank_image(tmp_path / "www") as (_, image):
        body = micro_run(image)
        assert nc.launch(body)["nc_state"] == "running"
    nc.kill9()
    mounted = nc.instance_dir.with_name("instances.elsewhere")
    nc.instance_dir.rename(mounted)  # as if its file system were not mounted
    nc.instance_dir.mkdir()

    with pytest.raises(RuntimeError, match="did not come up"):
        nc.start()

    assert "not the folder this node used before" in nc.log.read_text()
    assert nc.domains() == {iid(1)}  # the guest runs on
    shutil.rmtree(nc.instance_dir)
    mounted.rename(nc.instance_dir)
    nc.start()
    [instance] = nc.client.call("GET", "/v1/instances")["instances"]
    assert instance["nc_state"] == "running"
    nc.client.call("DELETE", f"/v1/instances/{iid(1)}")
    assert nc.domains() == set()
