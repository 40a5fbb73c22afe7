"""VmControl and the SLAs with real daemons: a `mallee-clc` in front of `mallee-cc`
daemons whose NCs run on libvirt's test driver (exact capacities, instant domains),
driven with boto3; the CLC killed, a CC gone and back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.cluster import fake_node, register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon
from tests.support.guest import wait_until

# one core each, so a node's cores count its instances
SMALL = "t1.small 1 128 1"
WAIT = {"Delay": 0.5, "MaxAttempts": 120}


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def zone(
    nc_factory: Callable[..., NcDaemon], cc_factory: Callable[..., CcDaemon], *cores: int
) -> tuple[CcDaemon, list[NcDaemon]]:
    """A CC of fake nodes with these many cores each."""
    ncs = [fake_node(nc_factory, n, public_bridge="user") for n in cores]
    cc = cc_factory()
    register(cc, *ncs)
    return cc, ncs


def blank_image(clc: ClcDaemon, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    disk = folder / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    return clc.add_disk("blank", disk)


def database_of(database: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The CLC's setting for a test on ``database``: SQLite (its default), or a new
    database on the session's PostgreSQL server."""
    if database == "postgresql":
        return {"database_url": request.getfixturevalue("postgres_database")}
    return {}


def zones_of(ec2: Any, ids: list[str]) -> list[str]:
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    found = {
        i["InstanceId"]: i["Placement"]["AvailabilityZone"]
        for r in reservations
        for i in r["Instances"]
    }
    return [found[i] for i in ids]


def domains(ncs: list[NcDaemon]) -> int:
    """The instances the nodes run (libvirt's test driver is each process's own: ask
    the NCs)."""
    listed = [nc.client.call("GET", "/v1/instances")["instances"] for nc in ncs]
    return sum(i["state"]["name"] in ("pending", "running") for found in listed for i in found)


def run(ec2: Any, emi: str, count: int, **params: Any) -> list[str]:
    reservation = ec2.run_instances(ImageId=emi, MinCount=count, MaxCount=count, **params)
    return [i["InstanceId"] for i in reservation["Instances"]]


def test_placement_names_quota_and_lease(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    a, a_ncs = zone(nc_factory, cc_factory, 2)
    b, _ = zone(nc_factory, cc_factory, 4)
    clc = clc_factory(instance_types=[SMALL], instance_quota=5, lease_hours=0)
    clc.admin("cluster", "add", "zone-a", a.url)
    clc.admin("cluster", "add", "zone-b", b.url)
    emi = blank_image(clc, tmp_path)
    ec2 = clc.ec2("alice")

    named = run(ec2, emi, 1, Placement={"AvailabilityZone": "zone-a"})
    emptiest = run(ec2, emi, 1, Placement={"AvailabilityZone": "mallee:emptiest"})
    assert zones_of(ec2, named + emptiest) == ["zone-a", "zone-b"]
    # the first zone by name where all three fit: zone-a has room for one
    fit = run(ec2, emi, 3)
    assert zones_of(ec2, fit) == ["zone-b"] * 3
    ec2.get_waiter("instance_running").wait(InstanceIds=named + emptiest + fit, WaiterConfig=WAIT)
    # five live: the quota allows no more, and a range is cut to what is left
    assert error_code(lambda: run(ec2, emi, 1)) == "InstanceLimitExceeded"
    ec2.terminate_instances(InstanceIds=fit)
    ec2.get_waiter("instance_terminated").wait(InstanceIds=fit, WaiterConfig=WAIT)
    spread = ec2.run_instances(
        ImageId=emi, MinCount=1, MaxCount=9, Placement={"AvailabilityZone": "mallee:spread"}
    )["Instances"]
    assert len(spread) == 3  # the quota's five less the two live
    assert zones_of(ec2, [i["InstanceId"] for i in spread]) == ["zone-a", "zone-b", "zone-b"]
    wait_until(lambda: domains(a_ncs) == 2, 30, "zone-a's two instances")
    # the other user's quota is their own
    assert len(run(clc.ec2("bob"), emi, 1)) == 1


def test_a_lease_ends_its_instances(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    cc, ncs = zone(nc_factory, cc_factory, 2)
    clc = clc_factory(instance_types=[SMALL], lease_hours=2 / 3600)  # two seconds
    clc.admin("cluster", "add", "zone-a", cc.url)
    emi = blank_image(clc, tmp_path)
    ec2 = clc.ec2("alice")
    ids = run(ec2, emi, 2)
    wait_until(lambda: set(_states(ec2, *ids)) == {"terminated"}, 30, "the lease to end")
    reservation = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]
    assert {i["StateReason"]["Code"] for i in reservation["Instances"]} == {"Server.LeaseExpired"}
    wait_until(lambda: domains(ncs) == 0, 30, "the domains to go")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_clc_killed_during_run_instances_loses_nothing_and_runs_nothing_twice(
    database: str,
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cc, ncs = zone(nc_factory, cc_factory, 2, 2)
    settings: dict[str, Any] = {"instance_types": [SMALL]}
    clc = clc_factory(**settings, **database_of(database, request))
    clc.admin("cluster", "add", "zone-a", cc.url)
    emi = blank_image(clc, tmp_path)
    ec2 = clc.ec2("alice")

    reservation = ec2.run_instances(ImageId=emi, MinCount=4, MaxCount=4, ClientToken="four")
    clc.kill9()  # before, while or after VmControl hands them to the CC
    restarted = clc_factory(
        **settings, database_url=clc.database_url, image_dir=clc.image_dir, port=clc.port
    )
    ec2 = restarted.client_of(clc.keys["alice"])
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=WAIT)
    assert domains(ncs) == 4  # each once
    again = ec2.run_instances(ImageId=emi, MinCount=4, MaxCount=4, ClientToken="four")
    assert again["ReservationId"] == reservation["ReservationId"]
    assert [i["InstanceId"] for i in again["Instances"]] == ids
    # a repeated token made nothing new
    assert len(ec2.describe_instances()["Reservations"]) == 1
    ec2.terminate_instances(InstanceIds=ids)
    ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=WAIT)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_cluster_gone_and_back_is_believed_again(
    database: str,
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cc, ncs = zone(nc_factory, cc_factory, 2)
    clc = clc_factory(instance_types=[SMALL], lost_after_polls=2, **database_of(database, request))
    clc.admin("cluster", "add", "zone-a", cc.url)
    emi = blank_image(clc, tmp_path)
    ec2 = clc.ec2("alice")
    kept, ended = run(ec2, emi, 2)
    ec2.get_waiter("instance_running").wait(InstanceIds=[kept, ended], WaiterConfig=WAIT)

    cc.kill9()
    wait_until(lambda: _zone_state(ec2) == "unavailable", 30, "the zone to be unavailable")
    # meanwhile one instance ends behind the cluster's back
    ncs[0].client.call("DELETE", f"/v1/instances/{ended}")
    # polls go on; silence proves nothing, so nothing is ended as lost
    polls_before = _polls(clc)
    wait_until(lambda: _polls(clc) >= polls_before + 3, 30, "three more polls")
    assert _states(ec2, kept, ended) == ["running", "running"]

    cc_factory(state_dir=cc.state_dir, port=cc.port)
    wait_until(lambda: _states(ec2, kept, ended) == ["running", "terminated"], 30, "convergence")
    assert _zone_state(ec2) == "available"
    assert 'mallee_clc_disagreements_total{kind="ended_by_cluster"} 1' in _metrics(clc)


def _states(ec2: Any, *ids: str) -> list[str]:
    reservations = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    found = {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}
    return [found[i] for i in ids]


def _zone_state(ec2: Any) -> str:
    return str(ec2.describe_availability_zones()["AvailabilityZones"][0]["State"])


def _metrics(clc: ClcDaemon) -> str:
    response = clc.client.session.get(f"{clc.url}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def _polls(clc: ClcDaemon) -> int:
    for line in _metrics(clc).splitlines():
        if line.startswith("mallee_clc_poll_seconds_count "):
            return int(float(line.split()[1]))
    return 0
