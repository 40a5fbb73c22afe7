"""Regions, zones and instance types through boto3: each registered cluster is a zone,
its room asked of its real CC (over mutual TLS, as the CLC), its nodes NCs on libvirt's
test driver with exact capacities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.cluster import fake_node, register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon


def zones(ec2: Any, *names: str) -> list[tuple[str, str]]:
    answer = ec2.describe_availability_zones(ZoneNames=list(names))["AvailabilityZones"]
    return [(z["ZoneName"], z["State"]) for z in answer]


def test_each_cluster_is_a_zone_with_its_room(
    clc_factory: Callable[..., ClcDaemon],
    cc_factory: Callable[..., CcDaemon],
    nc_factory: Callable[..., NcDaemon],
) -> None:
    cc = cc_factory()
    register(cc, fake_node(nc_factory, 4, memory_mb=1024, disk_gb=40))
    clc = clc_factory()
    clc.admin("cluster", "add", "zone-a", cc.url)
    gone = cc_factory()
    clc.admin("cluster", "add", "zone-b", gone.url)
    gone.stop()
    user, admin = clc.ec2("alice"), clc.ec2("root", admin=True)

    assert zones(user) == [("zone-a", "available"), ("zone-b", "unavailable")]
    assert zones(user, "zone-a") == [("zone-a", "available")]
    with pytest.raises(ClientError) as caught:
        zones(user, "zone-c")
    assert caught.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        zones(user, "verbose")
    assert caught.value.response["Error"]["Code"] == "UnauthorizedOperation"

    verbose = admin.describe_availability_zones(ZoneNames=["verbose", "zone-a"])
    lines = {z["ZoneName"]: z["State"] for z in verbose["AvailabilityZones"]}
    # 4 cores, 1 GiB, 40 GiB: m1.small (1/128/2) fits 4, m1.xlarge (2/1024/20) fits 1
    assert lines["|- m1.small"].split()[:3] == ["0004", "/", "0004"]
    assert lines["|- m1.xlarge"].split()[:3] == ["0001", "/", "0001"]
    assert lines["|- c1.xlarge"].split()[:3] == ["0000", "/", "0000"]


def test_region_and_instance_types(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory(instance_types=["m1.small 1 128 2", "lab.big 8 16384 100"])
    ec2 = clc.ec2("alice")
    [region] = ec2.describe_regions()["Regions"]
    assert region["RegionName"] == "mallee" and region["Endpoint"].endswith(f":{clc.port}")
    types = ec2.describe_instance_types()["InstanceTypes"]
    assert [
        (t["InstanceType"], t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"])
        for t in types
    ] == [("m1.small", 1, 128), ("lab.big", 8, 16384)]
    [big] = ec2.describe_instance_types(InstanceTypes=["lab.big"])["InstanceTypes"]
    assert big["InstanceStorageInfo"]["TotalSizeInGB"] == 100
    with pytest.raises(ClientError) as caught:
        ec2.describe_instance_types(InstanceTypes=["t2.nano"])
    assert caught.value.response["Error"]["Code"] == "InvalidInstanceType"
