"""The CC's reservations and failure handling, against NCs simulated in memory.

The integration tests drive real NCs; these make the failures that are hard to time
there (a run that times out after the NC made the instance, a node that fails midway).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mallee.cc.config import CcConfig
from mallee.cc.model import Health
from mallee.cc.service import ClusterController
from mallee.common.capacity import VmType
from mallee.common.config import ConfigError
from mallee.common.errors import (
    InstanceAlreadyExists,
    InstanceNotFound,
    MalleeError,
    NodeInUse,
    NodesUnavailable,
    SecurityGroupNotFound,
)
from mallee.common.metrics import Metrics
from mallee.common.rpc import RemoteError, Unreachable
from mallee.nc.model import Rule, SecurityGroup

SMALL: dict[str, Any] = {"name": "t1.small", "cores": 1, "memory_mb": 256, "disk_gb": 1}
IMAGE = {"id": "emi-12345678", "url": "http://x/i", "digest": "sha256:" + "a" * 64}
STATES = {"staging": ("pending", 0), "running": ("running", 16), "terminated": ("terminated", 48)}


def nc_view(
    instance_id: str,
    nc_state: str,
    failure: dict[str, Any] | None = None,
    net: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An instance as an NC describes it."""
    name, code = STATES[nc_state]
    return {
        "instance_id": instance_id,
        "reservation_id": "r-01234567",
        "owner_id": "alice",
        "vm_type": SMALL,
        "image_id": IMAGE["id"],
        "kernel_id": None,
        "ramdisk_id": None,
        "net": net or {},
        "state": {"name": name, "code": code},
        "nc_state": nc_state,
        "state_reason": "launch failed" if failure else "",
        "failure": failure,
        "launch_time": 1.0,
    }


class FakeNc:
    """An NC in memory: admits by cores, launches at once (or fails the launch as the
    real NC does: terminated, with the failure), lists and terminates instances."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.instances: dict[str, dict[str, Any]] = {}
        self.down = False  # refuses connections
        self.lose_answers = False  # admits the instance, then the answer is lost
        self.launch_failure: dict[str, Any] | None = None  # every launch fails so
        self.libvirt_down = False  # answers 503 HypervisorUnavailable, as the real NC
        self.groups: dict[str, Any] = {}  # security groups put here
        self.overlay_address = ""  # none: its private networks flood nowhere
        self.networks: dict[int, list[str]] = {}  # started: VLAN → peers

    def live(self) -> int:
        return sum(1 for i in self.instances.values() if i["nc_state"] != "terminated")

    def handle(self, method: str, path: str, body: Any, params: Any = None) -> Any:
        if self.down:
            raise Unreachable("refused", maybe_delivered=False)
        if self.libvirt_down and path != "/v1/resource":
            raise RemoteError(503, "HypervisorUnavailable", "libvirt does not answer")
        if (method, path) == ("GET", "/v1/instances"):
            wanted = (params or {}).get("instance_id") or list(self.instances)
            if missing := [i for i in wanted if i not in self.instances]:
                raise RemoteError(404, InstanceNotFound.code, f"no {missing}")
            return {"instances": [self.instances[i] for i in wanted]}
        if (method, path) == ("GET", "/v1/resource"):
            return {
                "cores_max": self.cores,
                "cores_available": self.cores - self.live(),
                "memory_mb_max": 8192,
                "memory_mb_available": 8192,
                "disk_gb_max": 100,
                "disk_gb_available": 100,
                "instances": self.live(),
                "hypervisor_reachable": not self.libvirt_down,
                "hypervisor_error": "libvirt does not answer" if self.libvirt_down else "",
                "overlay_address": self.overlay_address,
            }
        if path.startswith("/v1/networks"):
            return self.handle_network(method, path, body)
        if (method, path) == ("POST", "/v1/instances"):
            instance_id = body["instance_id"]
            if (vlan := body.get("net", {}).get("vlan")) and vlan not in self.networks:
                raise RemoteError(409, "NetworkNotStarted", f"VLAN {vlan} is not started")
            if self.live() >= self.cores:
                raise RemoteError(409, "InsufficientInstanceCapacity", "full")
            if self.launch_failure:
                self.instances[instance_id] = nc_view(
                    instance_id, "terminated", self.launch_failure
                )
            else:
                self.instances[instance_id] = nc_view(instance_id, "running", net=body.get("net"))
            if self.lose_answers:
                raise Unreachable("read timed out", maybe_delivered=True)
            return nc_view(instance_id, "staging")
        if path.startswith("/v1/security-groups"):
            return self.handle_group(method, path.rpartition("/")[2], body)
        if method == "DELETE":
            instance_id = path.rsplit("/", 1)[1]
            if instance_id not in self.instances:
                raise RemoteError(404, InstanceNotFound.code, "no such instance")
            net = self.instances[instance_id]["net"]
            self.instances[instance_id] = nc_view(instance_id, "terminated", net=net)
            return self.instances[instance_id]
        raise AssertionError(f"unexpected {method} {path}")

    def handle_network(self, method: str, path: str, body: Any) -> Any:
        if method == "POST":
            self.networks[body["vlan"]] = body["peers"]
            return {"vlan": body["vlan"], "bridge": "b", "peers": body["peers"]}
        vlan = int(path.rpartition("/")[2])
        users = [i for i, v in self.instances.items()
                 if v["nc_state"] != "terminated" and v["net"].get("vlan") == vlan]  # fmt: skip
        if users:
            raise RemoteError(409, "NetworkInUse", f"{users} on it")
        del self.networks[vlan]
        return {"vlan": vlan}

    def handle_group(self, method: str, group_id: str, body: Any) -> Any:
        if method == "GET":
            return {"security_groups": list(self.groups.values())}
        if method == "PUT":
            self.groups[group_id] = {**body, "group_id": group_id}
            return self.groups[group_id]
        if group_id not in self.groups:
            raise RemoteError(404, "InvalidGroup.NotFound", f"no {group_id}")
        del self.groups[group_id]
        return {"group_id": group_id}


BROKEN = {"code": "LaunchFailed", "message": "libvirt broke", "status": 500}


class Cluster:
    def __init__(self, tmp_path: Path, **cores: int) -> None:
        self.ncs = {name: FakeNc(n) for name, n in cores.items()}
        by_url = {f"https://{name}:8775": nc for name, nc in self.ncs.items()}

        class Client:
            def __init__(self, url: str, *_args: Any, **_kwargs: Any) -> None:
                self.nc = by_url[url]

            def call(
                self, method: str, path: str, body: Any = None, params: Any = None, **_: Any
            ) -> Any:
                return self.nc.handle(method, path, body, params)

        config = CcConfig(state_dir=str(tmp_path), poll_interval_s=3600.0)
        self.cc = ClusterController(config, None, Metrics("test"), make_client=Client)  # type: ignore[arg-type]  # RpcClient.call only
        registered = {n["name"] for n in self.cc.describe_nodes()}  # by an earlier CC
        for name in [n for n in self.ncs if n not in registered]:
            self.cc.register_node(name, f"https://{name}:8775")
        self.cc.poll()

    def run(self, *ids: str) -> list[dict[str, Any]]:
        return self.cc.run_instances(
            {
                "reservation_id": "r-01234567",
                "owner_id": "alice",
                "vm_type": SMALL,
                "image": IMAGE,
                "instances": [{"instance_id": i} for i in ids],
            }
        )

    def free(self) -> int:
        return int(self.cc.describe_resources([VmType(**SMALL)])[0]["available"])

    def health(self, name: str) -> str:
        return next(n["health"] for n in self.cc.describe_nodes() if n["name"] == name)


def iid(n: int) -> str:
    return f"i-{n:017x}"


def test_reservation_holds_until_the_node_reports(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.cc._refresh = lambda nodes: None  # type: ignore[method-assign]  # no poll
    cluster.run(iid(1))
    assert cluster.free() == 1  # the NC's figures are stale; the reservation counts
    cluster.cc.poll()
    assert cluster.free() == 1  # now the NC's own figures count it, and only once
    assert cluster.cc._reservations == {}


def test_what_a_call_changed_shows_in_the_next_describe(tmp_path: Path) -> None:
    """Runs and terminates poll their nodes before answering: room freed by a terminate
    shows at once, not a poll interval later."""
    cluster = Cluster(tmp_path, a=2)
    cluster.run(iid(1))
    assert cluster.free() == 1 and cluster.cc._reservations == {}
    cluster.cc.terminate_instances([iid(1)])
    assert cluster.free() == 2
    [described] = cluster.cc.describe_instances([iid(1)])
    assert described["state"]["name"] == "terminated"


def test_refused_connection_moves_the_instance_on(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    cluster.ncs["a"].down = True
    [view] = cluster.run(iid(1))
    assert view["node"] == "b"
    assert cluster.health("a") == "unreachable"


def test_broken_node_is_skipped_until_it_answers_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    cluster.ncs["a"].launch_failure = BROKEN
    assert cluster.run(iid(1))[0]["node"] == "b"
    assert cluster.health("a") == "unreachable"
    assert "libvirt broke" in cluster.cc.describe_nodes()[0]["last_error"]
    cluster.cc.poll()
    assert cluster.health("a") == "up"


def test_a_bad_request_is_relayed_and_tried_nowhere_else(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    for nc in cluster.ncs.values():
        nc.launch_failure = {"code": "ImageRejected", "message": "not qcow2", "status": 422}
    with pytest.raises(RemoteError) as caught:
        cluster.run(iid(1))
    assert (caught.value.status, caught.value.code) == (422, "ImageRejected")
    assert len(cluster.ncs["a"].instances) + len(cluster.ncs["b"].instances) == 1
    assert cluster.health("a") == "up" and cluster.health("b") == "up"
    assert cluster.free() == 4


def test_a_node_whose_libvirt_is_down_is_degraded_and_gets_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.run(iid(1))
    cluster.cc.poll()
    cluster.ncs["a"].libvirt_down = True
    cluster.cc.poll()
    assert cluster.health("a") == "degraded"
    [described] = cluster.cc.describe_instances([iid(1)])
    assert described["reachable"] is False and described["state"]["name"] == "running"
    assert cluster.free() == 0
    with pytest.raises(NodesUnavailable, match=r"a \(degraded: libvirt does not answer\)"):
        cluster.run(iid(2))
    cluster.ncs["a"].libvirt_down = False
    cluster.cc.poll()
    assert cluster.health("a") == "up" and cluster.free() == 1


def test_a_wall_clock_step_back_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.run(iid(1))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)  # an hour back
    cluster.cc.poll()
    assert cluster.cc._reservations == {}  # the poll after the dispatch released it
    assert cluster.free() == 1 and cluster.health("a") == "up"
    [described] = cluster.cc.describe_instances([iid(1)])
    assert described["reachable"] is True


def test_lost_answer_is_not_run_twice(tmp_path: Path) -> None:
    """The NC made the instance but its answer was lost: the CC terminates it there
    before running it elsewhere, and lists the live one."""
    cluster = Cluster(tmp_path, a=2, b=2)
    cluster.ncs["a"].lose_answers = True
    [view] = cluster.run(iid(1))
    assert view["node"] == "b"
    assert cluster.ncs["a"].instances[iid(1)]["nc_state"] == "terminated"
    cluster.cc.poll()
    [described] = cluster.cc.describe_instances([iid(1)])
    assert (described["node"], described["state"]["name"]) == ("b", "running")


def test_lost_answer_from_a_node_that_then_vanishes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    nc = cluster.ncs["a"]
    nc.lose_answers = True
    real_handle = nc.handle

    def gone_after_run(method: str, path: str, body: Any, params: Any = None) -> Any:
        if method == "DELETE":
            raise Unreachable("refused", maybe_delivered=False)
        return real_handle(method, path, body, params)

    nc.handle = gone_after_run  # type: ignore[method-assign]
    with pytest.raises(RemoteError) as caught:
        cluster.run(iid(1))
    assert (caught.value.status, caught.value.code) == (502, "Unreachable")
    assert f"node a may still hold {iid(1)}" in caught.value.message  # and what to do
    assert cluster.ncs["b"].instances == {}  # never run a second time
    nc.lose_answers = False
    cluster.cc.poll()  # the node answers again and lists it: a real instance
    [described] = cluster.cc.describe_instances([iid(1)])
    assert described["node"] == "a"


def test_no_partial_batch(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=1, b=1)
    cluster.ncs["b"].launch_failure = BROKEN  # b fails its instance; a has no room left
    with pytest.raises(NodesUnavailable, match=r"LaunchFailed: libvirt broke.*no other node"):
        cluster.run(iid(1), iid(2))
    assert cluster.ncs["a"].live() == 0  # its instance was terminated again
    assert cluster.cc._reservations == {}
    cluster.cc.poll()
    cluster.ncs["b"].launch_failure = None
    cluster.cc.poll()
    assert cluster.free() == 2


def test_unexpected_answer_leaks_no_reservation(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    real_handle = cluster.ncs["a"].handle

    def garbled(method: str, path: str, body: Any, params: Any = None) -> Any:
        return [] if method == "POST" else real_handle(method, path, body, params)

    cluster.ncs["a"].handle = garbled  # type: ignore[method-assign]
    with pytest.raises(MalleeError):
        cluster.run(iid(1))
    assert cluster.cc._reservations == {}
    assert cluster.free() == 2


def test_restart_while_a_node_is_down_keeps_its_instances(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.run(iid(1))
    cluster.cc.poll()
    cluster.ncs["a"].down = True
    again = ClusterController(
        CcConfig(state_dir=str(tmp_path)),
        None,
        Metrics("test"),
        make_client=type(cluster.cc._clients["a"].poll.rpc),
    )
    again.poll()
    [described] = again.describe_instances([iid(1)])
    assert (described["node"], described["reachable"]) == ("a", False)
    assert again.describe_nodes()[0]["health"] == Health.UNREACHABLE


def test_a_node_gone_for_good_is_forgotten_only_by_force(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.run(iid(1))
    cluster.cc.poll()
    cluster.ncs["a"].down = True
    cluster.cc.poll()
    with pytest.raises(NodeInUse, match=iid(1)):
        cluster.cc.deregister_node("a")
    cluster.cc.deregister_node("a", force=True)
    assert cluster.cc.describe_nodes() == []
    assert cluster.cc.describe_instances([]) == []


def test_an_id_still_being_run_is_a_duplicate(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    nc = cluster.ncs["a"]
    real_handle = nc.handle
    seen: list[str] = []

    def run_it_again_meanwhile(method: str, path: str, body: Any, params: Any = None) -> Any:
        if method == "POST" and not seen:
            seen.append("once")
            with pytest.raises(InstanceAlreadyExists):
                cluster.run(iid(1))  # the same id, while its first run is under way
        return real_handle(method, path, body, params)

    nc.handle = run_it_again_meanwhile  # type: ignore[method-assign]
    cluster.run(iid(1))
    assert seen and cluster.ncs["b"].instances == {}


def test_failure_after_a_poll_saw_it_staging_still_moves_on(tmp_path: Path) -> None:
    """The NC lists an instance while it stages it; a poll then releases the CC's
    reservation. If the launch fails after that, the instance must still move on."""
    cluster = Cluster(tmp_path, a=2, b=2)
    nc = cluster.ncs["a"]

    def stage_poll_then_fail(method: str, path: str, body: Any, params: Any = None) -> Any:
        if method == "POST":
            instance_id = body["instance_id"]
            nc.instances[instance_id] = nc_view(instance_id, "staging")
            cluster.cc.poll()
            failure = {"code": "LaunchFailed", "message": "disk full", "status": 500}
            nc.instances[instance_id] = nc_view(instance_id, "terminated", failure)
            return nc_view(instance_id, "staging")
        return FakeNc.handle(nc, method, path, body, params)

    nc.handle = stage_poll_then_fail  # type: ignore[method-assign]
    [view] = cluster.run(iid(1))
    assert view["node"] == "b"


def group(group_id: str, port: int) -> SecurityGroup:
    rule = Rule("tcp", port, port, cidr="10.0.0.0/8")
    return SecurityGroup(group_id, members=("10.1.0.5",), ingress=(rule,))


def held(nc: FakeNc) -> dict[str, int]:
    """The groups a node holds, each by the port its one rule opens."""
    return {g: v["ingress"][0]["from_port"] for g, v in nc.groups.items()}


def test_security_groups_reach_every_node_and_one_that_missed_a_change_catches_up(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, a=2, b=2)
    cluster.cc.put_security_group(group("sg-0000000a", 22))
    cluster.cc.put_security_group(group("sg-0000000b", 80))
    assert (
        held(cluster.ncs["a"])
        == held(cluster.ncs["b"])
        == {
            "sg-0000000a": 22,
            "sg-0000000b": 80,
        }
    )

    cluster.ncs["b"].down = True
    cluster.cc.poll()
    cluster.cc.put_security_group(group("sg-0000000a", 443))
    cluster.cc.delete_security_group("sg-0000000b")
    assert held(cluster.ncs["a"]) == {"sg-0000000a": 443}
    assert held(cluster.ncs["b"]) == {"sg-0000000a": 22, "sg-0000000b": 80}  # missed both

    cluster.ncs["b"].down = False
    cluster.cc.poll()
    assert held(cluster.ncs["b"]) == {"sg-0000000a": 443}
    assert cluster.health("b") == "up"


def test_a_restarted_cc_keeps_its_groups_and_puts_them_on_its_nodes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    cluster.cc.put_security_group(group("sg-0000000a", 22))

    restarted = Cluster(tmp_path, a=2)  # the same store, a new process; a new, empty node

    assert [g.group_id for g in restarted.cc.security_groups()] == ["sg-0000000a"]
    assert held(restarted.ncs["a"]) == {"sg-0000000a": 22}


def test_deleting_a_group_the_cluster_does_not_have(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, a=2)
    with pytest.raises(SecurityGroupNotFound, match="sg-0000000c is not in this cluster"):
        cluster.cc.delete_security_group("sg-0000000c")


def test_each_node_carrying_a_vlan_floods_to_the_others_carrying_it(tmp_path: Path) -> None:
    """A VLAN is started on a node before its first instance there, flooding to the
    other nodes of the VLAN (which learn of the newcomer too); a node with none of its
    instances left stops it, and the others forget it."""
    cluster = Cluster(tmp_path, a=1, b=1, c=1)
    for name, nc in cluster.ncs.items():
        nc.overlay_address = {"a": "10.9.0.1", "b": "10.9.0.2", "c": "10.9.0.3"}[name]
    cluster.cc.poll()

    def run_on_vlan(instance_id: str, vlan: int) -> str:
        net = {"private_mac": f"d0:0d:00:00:00:{instance_id[-2:]}", "vlan": vlan}
        [placed] = cluster.cc.run_instances(
            {
                "reservation_id": "r-01234567",
                "owner_id": "alice",
                "vm_type": SMALL,
                "image": IMAGE,
                "instances": [{"instance_id": instance_id, "net": net}],
            }
        )
        return str(placed["node"])

    first = run_on_vlan(iid(1), 10)
    second = run_on_vlan(iid(2), 10)
    other = run_on_vlan(iid(3), 20)
    address = {name: nc.overlay_address for name, nc in cluster.ncs.items()}
    assert cluster.ncs[first].networks == {10: [address[second]]}
    assert cluster.ncs[second].networks == {10: [address[first]]}
    assert cluster.ncs[other].networks == {20: []}  # alone on VLAN 20: floods nowhere

    cluster.cc.terminate_instances([iid(2)])
    cluster.cc.poll()
    assert cluster.ncs[second].networks == {}
    assert cluster.ncs[first].networks == {10: []}


OVERLAY = {"overlay": "vxlan", "overlay_address": "127.0.0.1", "private_subnet": "10.200.0.0/16"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"overlay_peers": ["10.98.0.2"]}, r"overlay_peers needs an overlay"),
        ({**OVERLAY, "overlay_peers": ["10.98.0.2"]}, "needs overlay_peer_address"),
        ({**OVERLAY, "overlay_peers": ["cc-b"]}, "'cc-b' is not an IPv4 address"),
        (
            {**OVERLAY, "overlay_peers": ["127.0.0.1"], "overlay_peer_address": "127.0.0.1"},
            "127.0.0.1 is this CC's own overlay_peer_address",
        ),
        (
            {**OVERLAY, "overlay_peers": ["10.98.0.2"], "overlay_peer_address": "10.98.0.1"},
            r"overlay_peer_address: 10.98.0.1 is not an address of this host",
        ),
        (  # this host's loopback network: the CC would route slices of it
            {**OVERLAY, "private_subnet": "127.0.0.0/16"},
            r"private_subnet: 127.0.0.0/16 overlaps 127.0.0.1/8 on lo",
        ),
    ],
)
def test_overlay_keys_that_cannot_work_stop_the_cc_at_start(
    tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterController(CcConfig(state_dir=str(tmp_path), **keys), None, Metrics("test"))
    assert not (tmp_path / "cc.db").exists()  # nothing made
