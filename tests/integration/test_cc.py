"""A real `mallee-cc` in front of real `mallee-nc` daemons on loopback.

Most NCs here run on libvirt's test driver, with their capacity set by config, so that
placement and counts are exact; the boot test uses real TCG guests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mallee.common.rpc import RemoteError
from tests.support.cluster import BIG, SMALL, blank_image, counts, fake_node, iid, register, run
from tests.support.daemons import CcDaemon, NcDaemon
from tests.support.guest import GuestImage, run_request, wait_for_console, wait_until


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A 1 MiB blank raw image, served over HTTP."""
    with blank_image(tmp_path / "www") as (_, image):
        yield image


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("first-fit", ["A", "B", "A", "B"]),
        ("round-robin", ["A", "B", "C", "A"]),
        ("spread", ["A", "B", "C", "C"]),
        ("pack", ["A", "B", "B", "A"]),
    ],
)
def test_policy_places_a_known_sequence(
    policy: str,
    expected: list[str],
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    nodes = {
        "A": fake_node(nc_factory, 2),
        "B": fake_node(nc_factory, 4),
        "C": fake_node(nc_factory, 4),
    }
    by_name = {nc.name: letter for letter, nc in nodes.items()}
    cc = cc_factory(scheduler=policy)
    register(cc, *nodes.values())
    placed = []
    for n, vm in enumerate([SMALL, BIG, SMALL, SMALL]):
        [instance] = run(cc, blank, vm, iid(n + 1))
        placed.append(by_name[instance["node"]])
    assert placed == expected


def test_describe_resources_is_exact_for_mixed_types(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    a = fake_node(nc_factory, cores=4, memory_mb=4096, disk_gb=4)
    b = fake_node(nc_factory, cores=2, memory_mb=8192, disk_gb=4)
    c = fake_node(nc_factory, cores=8, memory_mb=1024, disk_gb=4)
    cc = cc_factory()
    register(cc, a, b, c)
    small = {"name": "small", "cores": 1, "memory_mb": 512, "disk_gb": 1}
    big = {"name": "big", "cores": 2, "memory_mb": 2048, "disk_gb": 2}
    fat = {"name": "fat", "cores": 1, "memory_mb": 4096, "disk_gb": 1}
    # per node (A, B, C): small 4+2+2, big 2+1+0, fat 1+2+0
    assert counts(cc, small, big, fat) == {"small": (8, 8), "big": (3, 3), "fat": (3, 3)}

    run(cc, blank, small, iid(1), iid(2))  # first-fit: both on A, leaving 2 cores, 3072 MiB

    def reported_by_a() -> int:
        nodes = {n["name"]: n for n in cc.client.call("GET", "/v1/nodes")["nodes"]}
        return int(nodes[a.name]["instances"])

    wait_until(lambda: reported_by_a() == 2, 10, "A's poll to report both")
    assert counts(cc, small, big, fat) == {"small": (6, 8), "big": (2, 3), "fat": (2, 3)}


def test_more_than_fits_is_refused_whole(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    cc = cc_factory()
    register(cc, fake_node(nc_factory, 2), fake_node(nc_factory, 2))
    with pytest.raises(RemoteError) as caught:
        run(cc, blank, SMALL, *(iid(n) for n in range(1, 6)))
    assert (caught.value.status, caught.value.code) == (409, "InsufficientInstanceCapacity")
    assert "room for 4" in caught.value.message
    assert cc.client.call("GET", "/v1/instances")["instances"] == []
    assert counts(cc, SMALL)["t1.small"] == (4, 4)  # no reservation left behind
    assert len(run(cc, blank, SMALL, *(iid(n) for n in range(1, 5)))) == 4


def test_concurrent_batches_cannot_share_the_last_slot(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    cc = cc_factory(poll_interval_s=30.0)  # the NCs' figures stay stale throughout
    register(cc, fake_node(nc_factory, 3))
    outcomes: list[str] = []

    def batch(first: int) -> None:
        try:
            run(cc, blank, SMALL, iid(first), iid(first + 1))
            outcomes.append("placed")
        except RemoteError as e:
            outcomes.append(e.message)

    threads = [threading.Thread(target=batch, args=(n,)) for n in (1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Refused at placement, by the reservations of the other batch (not later by the
    # NC, whose own refusal would read "no other node has room").
    assert len(outcomes) == 2 and "placed" in outcomes
    assert any("the cluster has room for 1 now" in o for o in outcomes), outcomes
    assert len(cc.client.call("GET", "/v1/instances")["instances"]) == 2


def test_failing_node_is_skipped_and_marked(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    a, b = fake_node(nc_factory, 2), fake_node(nc_factory, 2)
    cc = cc_factory(poll_interval_s=30.0)  # the CC still believes A is up
    register(cc, a, b)
    a.kill9()

    [instance] = run(cc, blank, SMALL, iid(1))

    assert instance["node"] == b.name
    nodes = {n["name"]: n for n in cc.client.call("GET", "/v1/nodes")["nodes"]}
    assert nodes[a.name]["health"] == "unreachable"
    assert iid(1) in nodes[a.name]["last_error"]


def test_bad_requests_leave_nothing(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    nc = fake_node(nc_factory, 2)
    cc = cc_factory()
    register(cc, nc)

    def error(method: str, path: str, body: Any = None) -> tuple[int, str]:
        with pytest.raises(RemoteError) as caught:
            cc.client.call(method, path, body)
        return caught.value.status, caught.value.code

    assert error("DELETE", "/v1/nodes/nowhere") == (404, "InvalidNode.NotFound")
    assert error("POST", "/v1/nodes", {"name": nc.name, "url": "https://127.0.0.1:1"}) == (
        409,
        "InvalidNode.Duplicate",
    )
    assert error("POST", "/v1/nodes", {"name": "other", "url": nc.url}) == (
        409,
        "InvalidNode.Duplicate",
    )
    bad_type = {"name": "t1.bad", "cores": 0, "memory_mb": 256, "disk_gb": 1}
    assert error("POST", "/v1/resources/describe", {"vm_types": [bad_type]}) == (
        400,
        "MalformedRequest",
    )
    body = {
        "reservation_id": "r-01234567",
        "owner_id": "alice",
        "vm_type": bad_type,
        "image": blank,
        "instances": [{"instance_id": iid(1)}],
    }
    assert error("POST", "/v1/instances", body) == (400, "MalformedRequest")
    missing = {**blank, "url": blank["url"] + ".gone"}
    assert error("POST", "/v1/instances", {**body, "vm_type": SMALL, "image": missing}) == (
        422,
        "ImageFetchFailed",
    )  # the NC's error, relayed; not retried elsewhere
    assert error("POST", "/v1/instances/terminate", {"instance_ids": [iid(9)]}) == (
        404,
        "InvalidInstanceID.NotFound",
    )
    assert len(cc.client.call("GET", "/v1/nodes")["nodes"]) == 1
    assert counts(cc, SMALL)["t1.small"] == (2, 2)  # nothing reserved
    run(cc, blank, SMALL, iid(2))  # (iid(1) stays taken: its failed launch is on record)
    assert error("DELETE", f"/v1/nodes/{nc.name}") == (409, "NodeInUse")


def test_cc_restart_loses_no_node_and_no_instance(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    a, b, spare = fake_node(nc_factory, 2), fake_node(nc_factory, 2), fake_node(nc_factory, 1)
    cc = cc_factory(scheduler="round-robin")
    register(cc, a, b, spare)
    cc.client.call("DELETE", f"/v1/nodes/{spare.name}")
    run(cc, blank, SMALL, iid(1), iid(2))
    cc.kill9()

    again = cc_factory(state_dir=str(cc.workdir / "cc-state"))

    assert [n["name"] for n in again.client.call("GET", "/v1/nodes")["nodes"]] == [a.name, b.name]
    wait_until(
        lambda: len(again.client.call("GET", "/v1/instances")["instances"]) == 2,
        10,
        "the first poll",
    )
    nodes = {
        i["instance_id"]: i["node"] for i in again.client.call("GET", "/v1/instances")["instances"]
    }
    assert nodes == {iid(1): a.name, iid(2): b.name}
    results = again.client.call(
        "POST", "/v1/instances/terminate", {"instance_ids": [iid(1), iid(2)]}
    )["results"]
    assert [r["instance"]["state"]["name"] for r in results] == ["terminated", "terminated"]


def test_node_down_and_back(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    blank: dict[str, str],
) -> None:
    """A killed NC is marked down; its instances stay listed as unreachable (their
    guests run on) and are found again when it returns. Real QEMU domains here."""
    nc = nc_factory()
    cc = cc_factory(down_after_s=2.0)
    register(cc, nc)
    run(cc, blank, {"name": "t1.micro", "cores": 1, "memory_mb": 64, "disk_gb": 1}, iid(1))

    def state() -> str:
        return str(cc.client.call("GET", "/v1/instances")["instances"][0]["state"]["name"])

    wait_until(lambda: state() == "running", 10, "a poll to report the instance running")
    nc.kill9()

    def health() -> str:
        return str(cc.client.call("GET", "/v1/nodes")["nodes"][0]["health"])

    wait_until(lambda: health() == "down", 30, "the node to be marked down")
    [instance] = cc.client.call("GET", "/v1/instances")["instances"]
    assert (instance["instance_id"], instance["reachable"]) == (iid(1), False)
    assert instance["state"]["name"] == "running"  # the last the node said
    assert counts(cc, SMALL)["t1.small"] == (0, 0)  # a down node offers nothing

    nc.start()

    wait_until(lambda: health() == "up", 30, "the node to be up again")
    [instance] = cc.client.call("GET", "/v1/instances")["instances"]
    assert instance["reachable"] is True and instance["state"]["name"] == "running"
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(1)]})
    assert nc.domains() == set()


def test_real_guests_boot_across_two_ncs(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    guest: GuestImage,
) -> None:
    a, b = nc_factory(), nc_factory()
    cc = cc_factory(scheduler="spread")
    register(cc, a, b)
    body = {k: v for k, v in run_request(iid(1), guest).items() if k != "instance_id"}
    body["instances"] = [{"instance_id": iid(1)}, {"instance_id": iid(2)}]

    instances = cc.client.call("POST", "/v1/instances", body)["instances"]

    assert {i["node"] for i in instances} == {a.name, b.name}
    for instance in instances:
        wait_for_console(cc.client, instance["instance_id"], "MALLEE-BOOT-OK")
    results = cc.client.call("POST", "/v1/instances/reboot", {"instance_ids": [iid(1), iid(2)]})[
        "results"
    ]
    assert all("error" not in r for r in results)
    for instance in instances:  # each guest boots a second time
        wait_for_console(cc.client, instance["instance_id"], "MALLEE-BOOT-OK", count=2)
    cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": [iid(1), iid(2)]})
    assert a.domains() == set() and b.domains() == set()
    assert a.files() == [] and b.files() == []
