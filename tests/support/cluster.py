"""A cluster for integration tests: NCs on libvirt's test driver with exact capacities,
a CC in front of them, and the calls the tests make of it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon
from tests.support.guest import wait_until
from tests.support.hosts import ns
from tests.support.http import FileServer, serve_directory
from tests.support.network import InstanceNetwork


class NetworkedCloud(NamedTuple):
    """A CLC with one zone of real NCs on an instance network (the fixture
    ``networked_cloud``), and the tiny guest's emi id."""

    clc: ClcDaemon
    emi: str
    ncs: list[NcDaemon]
    net: InstanceNetwork
    cc: CcDaemon


SMALL = {"name": "t1.small", "cores": 1, "memory_mb": 256, "disk_gb": 1}
BIG = {"name": "t1.big", "cores": 3, "memory_mb": 256, "disk_gb": 1}


@contextmanager
def blank_image(
    folder: Path, size: int = 1 << 20, address: str = "127.0.0.1"
) -> Iterator[tuple[FileServer, dict[str, str]]]:
    """A blank raw image of ``size`` bytes, served over HTTP from ``folder`` at
    ``address``."""
    folder.mkdir()
    path = folder / "blank.raw"
    path.write_bytes(b"\0" * size)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with serve_directory(folder, address=address) as server:
        yield server, {"id": "emi-b1a4b1a4", "url": f"{server.url}/blank.raw", "digest": digest}


def fake_node(
    nc_factory: Callable[..., NcDaemon],
    cores: int,
    memory_mb: int = 8192,
    disk_gb: int = 8,
    **settings: Any,
) -> NcDaemon:
    """An NC on libvirt's test driver offering exactly these resources."""
    return nc_factory(
        libvirt_uri="test:///default",
        hypervisor="qemu",
        swap_mb=0,
        cpu_overcommit=64.0,
        max_cores=cores,
        max_memory_mb=memory_mb,
        max_disk_gb=disk_gb,
        **settings,
    )


def register(cc: CcDaemon, *ncs: NcDaemon) -> None:
    for nc in ncs:
        cc.client.call("POST", "/v1/nodes", {"name": nc.name, "url": nc.url})

    def all_up() -> bool:
        return all(n["health"] == "up" for n in cc.client.call("GET", "/v1/nodes")["nodes"])

    wait_until(all_up, 30, "every node to be up")


def run(cc: CcDaemon, image: dict[str, str], vm: dict[str, Any], *ids: str) -> list[dict[str, Any]]:
    body = {
        "reservation_id": "r-0123456789abcdef0",
        "owner_id": "alice",
        "vm_type": vm,
        "image": image,
        "instances": [{"instance_id": i} for i in ids],
    }
    instances: list[dict[str, Any]] = cc.client.call("POST", "/v1/instances", body)["instances"]
    return instances


def counts(cc: CcDaemon, *vms: dict[str, Any]) -> dict[str, tuple[int, int]]:
    answer = cc.client.call("POST", "/v1/resources/describe", {"vm_types": list(vms)})
    return {t["name"]: (t["available"], t["max"]) for t in answer["vm_types"]}


def iid(n: int) -> str:
    return f"i-{n:017x}"


def node_of(cc: CcDaemon, instance_id: str) -> str:
    """The node the CC placed ``instance_id`` on."""
    [view] = cc.client.call("GET", "/v1/instances", params={"instance_id": instance_id})[
        "instances"
    ]
    return str(view["node"])


def peered_ccs(
    cc_factory: Callable[..., CcDaemon],
    heads: tuple[str, str],
    settings: dict[str, Any],
    zone_b: dict[str, Any],
) -> dict[str, CcDaemon]:
    """The CCs of the test bed's two clusters (the ``two_clusters`` fixture), by zone,
    each joined to the other over the head nodes' LAN (``heads``: their addresses
    there): zone-a's here, zone-b's on head node h2, with ``zone_b``'s keys too."""
    here, there = heads
    return {
        "zone-a": cc_factory(overlay_peers=[there], overlay_peer_address=here, **settings),
        "zone-b": cc_factory(
            netns=ns("h2"),
            address=there,
            overlay_peers=[here],
            overlay_peer_address=there,
            **zone_b,
            **settings,
        ),
    }
