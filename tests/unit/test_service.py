"""NodeController on libvirt's test driver: admission, launches that fail or are
cancelled leaving nothing behind, the monitor's reconciliation and recovery after a
restart. Real images over loopback HTTP, real qemu-img disks; only the hypervisor is
libvirt's test driver."""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from mallee.common.capacity import VmType
from mallee.common.errors import (
    HypervisorError,
    HypervisorUnavailable,
    IncorrectInstanceState,
    InstanceAlreadyExists,
    InstanceNotFound,
    InsufficientResources,
    InvalidParameter,
    NetworkNotStarted,
)
from mallee.nc.config import NcConfig
from mallee.nc.model import ImageRef, Instance, NcState, NetConfig
from mallee.nc.service import NodeController, RefusedToStart
from mallee.nc.store import MARKER, RECORD
from tests.support.guest import wait_until
from tests.support.http import FileServer

SMALL = VmType("m1.small", 1, 256, 1)
_ids = itertools.count(1)


@pytest.fixture
def image(file_server: FileServer) -> ImageRef:
    path = file_server.root / "root.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "16M"], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImageRef("emi-12345678", f"{file_server.url}/root.raw", f"sha256:{digest}")


@pytest.fixture
def config(tmp_path: Path) -> NcConfig:
    return NcConfig(
        node_name=f"unit-{tmp_path.name}",
        libvirt_uri="test:///default",
        hypervisor="qemu",
        instance_dir=str(tmp_path / "instances"),
        image_cache_dir=str(tmp_path / "images"),
        max_cores=2,
        max_memory_mb=1024,
        swap_mb=64,
    )


@pytest.fixture
def nc(config: NcConfig) -> NodeController:
    return NodeController(config)


@pytest.fixture(autouse=True)
def _no_domains_left() -> Iterator[None]:
    yield
    conn = libvirt.open("test:///default")
    for dom in conn.listAllDomains():
        if dom.name().startswith("i-") and dom.isActive():
            dom.destroy()


def new(image: ImageRef, vm: VmType = SMALL, **changes: object) -> Instance:
    instance_id = f"i-{next(_ids):017x}"
    return Instance(instance_id, "r-01234567", "alice", vm, image, **changes)  # type: ignore[arg-type]


def state_of(nc: NodeController, instance_id: str) -> Instance:
    [instance] = nc.describe_instances([instance_id])
    return instance


def settle(nc: NodeController, instance_id: str, *states: NcState) -> Instance:
    """The instance once it is in one of ``states`` (default: out of staging)."""
    wanted = states or (NcState.RUNNING, NcState.TEARDOWN, NcState.TERMINATED)
    wait_until(lambda: state_of(nc, instance_id).state in wanted, 30, f"{instance_id} {wanted}")
    return state_of(nc, instance_id)


def launched(nc: NodeController, instance: Instance) -> Instance:
    """runInstance, then the launch's outcome."""
    assert nc.run_instance(instance).state is NcState.STAGING
    return settle(nc, instance.instance_id)


def domains(nc: NodeController) -> set[str]:
    return nc.hypervisor.active_domains()


def leftovers(nc: NodeController) -> list[str]:
    """What instances left in the instance folder, besides the folder's marker and the
    records of terminated instances (kept for terminated_retention_s)."""
    left = []
    for path in sorted(nc.store.root.rglob("*")):
        relative = str(path.relative_to(nc.store.root))
        if relative == MARKER or path.is_dir():
            continue
        if path.name == RECORD and state_of(nc, path.parent.name).state is NcState.TERMINATED:
            continue
        left.append(relative)
    return left


def test_run_describe_terminate(nc: NodeController, image: ImageRef) -> None:
    instance = new(image)
    pending = nc.run_instance(instance)
    assert pending.state is NcState.STAGING  # answered before the launch
    running = settle(nc, instance.instance_id)
    assert running.state is NcState.RUNNING and running.failure is None
    assert domains(nc) == {running.instance_id}
    assert nc.describe_resource()["cores_available"] == 1
    terminated = nc.terminate_instance(running.instance_id)
    assert terminated.state is NcState.TERMINATED and terminated.state_reason == "user request"
    assert domains(nc) == set() and leftovers(nc) == []
    assert nc.describe_resource()["cores_available"] == 2
    assert nc.terminate_instance(running.instance_id).state is NcState.TERMINATED


def test_duplicate_id(nc: NodeController, image: ImageRef) -> None:
    instance = launched(nc, new(image))
    with pytest.raises(InstanceAlreadyExists):
        nc.run_instance(instance)
    nc.terminate_instance(instance.instance_id)
    with pytest.raises(InstanceAlreadyExists):  # a terminated id is not reused either
        nc.run_instance(instance)
    assert domains(nc) == set()


def test_insufficient_resources_leave_nothing(nc: NodeController, image: ImageRef) -> None:
    launched(nc, new(image, VmType("m1.large", 2, 512, 1)))
    with pytest.raises(InsufficientResources, match=r"needs 1 cores.*0 cores"):
        nc.run_instance(new(image))
    assert len(leftovers(nc)) == 5 and len(domains(nc)) == 1  # the first one's files
    assert nc.describe_resource()["instances"] == 1


@pytest.mark.parametrize(
    ("change", "code", "status", "says"),
    [
        ({"url_suffix": ".missing"}, "ImageFetchFailed", 422, "answered 404"),
        ({"digest": "sha256:" + "0" * 64}, "ImageDigestMismatch", 422, "expected sha256:000"),
        ({"format": "qcow2"}, "ImageRejected", 422, "declared qcow2"),
    ],
)
def test_a_bad_image_fails_the_launch_as_the_requests_fault(
    nc: NodeController, image: ImageRef, change: dict[str, str], code: str, status: int, says: str
) -> None:
    bad = replace(
        image,
        url=image.url + change.get("url_suffix", ""),
        digest=change.get("digest", image.digest),
        format=change.get("format", image.format),
    )
    instance = new(bad)
    failed = launched(nc, instance)
    assert failed.state is NcState.TERMINATED and failed.state_reason == "launch failed"
    assert failed.failure is not None
    assert (failed.failure.code, failed.failure.status) == (code, status)
    assert says in failed.failure.message
    assert str(nc.images.directory) not in failed.failure.message  # no host paths
    assert domains(nc) == set() and leftovers(nc) == []
    assert not list(nc.images.directory.iterdir())  # no partial download
    assert nc.describe_resource()["cores_available"] == 2


def test_disk_too_small_fails_the_launch(config: NcConfig, image: ImageRef) -> None:
    nc = NodeController(replace(config, swap_mb=2048))
    failed = launched(nc, new(image))
    assert failed.failure is not None
    assert (failed.failure.code, failed.failure.status) == ("InvalidParameterValue", 400)
    assert "cannot hold" in failed.failure.message
    assert leftovers(nc) == [] and domains(nc) == set()


def test_unstarted_network_is_refused(nc: NodeController, image: ImageRef) -> None:
    with pytest.raises(NetworkNotStarted, match="VLAN 4000"):
        nc.run_instance(new(image, net=NetConfig(private_mac="d0:0d:00:00:00:01", vlan=4000)))
    with pytest.raises(InvalidParameter, match="public_bridge"):
        nc.run_instance(new(image, net=NetConfig(public_mac="d0:0d:00:00:00:01")))
    assert leftovers(nc) == [] and nc.describe_instances() == []


def test_unknown_instance(nc: NodeController) -> None:
    for call in (nc.terminate_instance, nc.reboot_instance, nc.console_output):
        with pytest.raises(InstanceNotFound):
            call("i-00000000000000000")
    with pytest.raises(InstanceNotFound):
        nc.describe_instances(["i-00000000000000000"])


def test_monitor_cleans_up_a_stopped_guest(nc: NodeController, image: ImageRef) -> None:
    instance = launched(nc, new(image))
    libvirt.open("test:///default").lookupByName(instance.instance_id).destroy()
    nc.reconcile()
    after = settle(nc, instance.instance_id, NcState.TERMINATED)
    assert after.state_reason == "the guest stopped"
    assert leftovers(nc) == []


def test_terminated_instances_are_forgotten(config: NcConfig, image: ImageRef) -> None:
    nc = NodeController(replace(config, terminated_retention_s=0))
    instance = launched(nc, new(image))
    nc.terminate_instance(instance.instance_id)
    nc.reconcile()
    assert nc.describe_instances() == []
    assert not nc.store.directory(instance.instance_id).exists()


def test_a_wall_clock_step_forgets_no_terminated_instance_early(
    nc: NodeController, image: ImageRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = launched(nc, new(image))
    nc.terminate_instance(instance.instance_id)
    two_hours_on = time.time() + 7200  # the wall clock jumps past the hour's retention
    monkeypatch.setattr(time, "time", lambda: two_hours_on)
    nc.reconcile()
    assert state_of(nc, instance.instance_id).state is NcState.TERMINATED


def test_terminated_instances_stay_visible_across_a_restart(
    config: NcConfig, nc: NodeController, image: ImageRef
) -> None:
    instance = launched(nc, new(image))
    nc.terminate_instance(instance.instance_id)
    restarted = NodeController(config)
    after = state_of(restarted, instance.instance_id)
    assert after.state is NcState.TERMINATED and after.state_reason == "user request"
    assert restarted.describe_resource()["cores_available"] == 2
    assert leftovers(restarted) == []


def test_recovery_keeps_running_and_cleans_the_rest(
    config: NcConfig, nc: NodeController, image: ImageRef
) -> None:
    kept = launched(nc, new(image))
    vanished = launched(nc, new(image))
    libvirt.open("test:///default").lookupByName(vanished.instance_id).destroy()
    # a launch the old process never finished: record written, disks half made
    half = new(image)
    nc.store.create(half)
    (nc.store.directory(half.instance_id) / "root.qcow2").write_bytes(b"partial")
    # a folder without a record, a folder that is no instance's, and a domain of this
    # node without either
    (nc.store.root / "i-0000000000000dead").mkdir()
    (nc.store.root / "lost+found").mkdir()
    orphan = new(image)
    kept_xml = (nc.store.directory(kept.instance_id) / "domain.xml").read_text()
    [kept_uuid] = re.findall(r"<uuid>([^<]+)</uuid>", kept_xml)
    orphan_xml = kept_xml.replace(kept.instance_id, orphan.instance_id)
    nc.hypervisor.start(orphan_xml.replace(kept_uuid, str(uuid.uuid4())))

    restarted = NodeController(config)

    for gone in (vanished, half):
        settle(restarted, gone.instance_id, NcState.TERMINATED)
    states = {i.instance_id: i.state for i in restarted.describe_instances()}
    assert states == {
        kept.instance_id: NcState.RUNNING,
        vanished.instance_id: NcState.TERMINATED,
        half.instance_id: NcState.TERMINATED,
    }
    assert domains(restarted) == {kept.instance_id}
    assert {p.name for p in restarted.store.root.iterdir()} == {
        MARKER,
        "lost+found",  # never removed: not an instance's folder
        kept.instance_id,
        vanished.instance_id,  # their terminated records
        half.instance_id,
    }
    assert restarted.terminate_instance(kept.instance_id).state is NcState.TERMINATED
    assert domains(restarted) == set() and leftovers(restarted) == []


def test_refuses_an_empty_instance_dir_while_its_guests_run(
    config: NcConfig, nc: NodeController, image: ImageRef, tmp_path: Path
) -> None:
    """A changed or unmounted instance_dir: the NC refuses to start, destroys nothing."""
    running = launched(nc, new(image))
    elsewhere = replace(config, instance_dir=str(tmp_path / "unmounted"))
    with pytest.raises(RefusedToStart, match=r"not the folder this node used before"):
        NodeController(elsewhere)
    assert domains(nc) == {running.instance_id}
    assert not (tmp_path / "unmounted" / MARKER).exists()  # and it did not claim it
    again = NodeController(config)  # the right folder: starts, keeps the guest
    assert state_of(again, running.instance_id).state is NcState.RUNNING


def test_libvirt_back_showing_guests_of_a_strange_folder_means_serving_none(
    config: NcConfig, nc: NodeController, image: ImageRef, tmp_path: Path
) -> None:
    """Started on a changed instance_dir while libvirt was away, too late to refuse to
    start: once libvirt shows this node's guests, the NC serves no instance (so the CC
    sees it degraded) and destroys nothing."""
    running = launched(nc, new(image))
    elsewhere = replace(
        config, instance_dir=str(tmp_path / "unmounted"), libvirt_uri="test:///missing.xml"
    )
    late = NodeController(elsewhere)  # libvirt does not answer: it starts
    late.hypervisor.uri = "test:///default"  # libvirt answers again
    late.reconcile()
    resource = late.describe_resource()
    assert resource["hypervisor_reachable"] is False
    assert "not the folder this node used before" in str(resource["hypervisor_error"])
    with pytest.raises(HypervisorUnavailable, match="serves no instance"):
        late.run_instance(new(image))
    with pytest.raises(HypervisorUnavailable, match="serves no instance"):
        late.describe_instances()
    assert domains(nc) == {running.instance_id}
    assert not (tmp_path / "unmounted" / MARKER).exists()


def test_no_launch_between_libvirt_coming_back_and_recovery(
    config: NcConfig, image: ImageRef
) -> None:
    """Recovery has not yet looked at what libvirt runs: a launch admitted now could be
    taken for one the old process left unfinished."""
    nc = NodeController(replace(config, libvirt_uri="test:///missing.xml"))
    nc.hypervisor.uri = "test:///default"  # libvirt answers again
    with pytest.raises(HypervisorUnavailable, match="still recovering"):
        nc.run_instance(new(image))
    nc.reconcile()  # the monitor's pass recovers
    assert launched(nc, new(image)).state is NcState.RUNNING


def test_refuses_another_nodes_instance_dir(config: NcConfig, nc: NodeController) -> None:
    with pytest.raises(RefusedToStart, match=f"belongs to node '{config.node_name}'"):
        NodeController(replace(config, node_name="another-node"))


def test_other_nodes_domains_are_left_alone(
    config: NcConfig, nc: NodeController, image: ImageRef, tmp_path: Path
) -> None:
    mine = launched(nc, new(image))
    other = NodeController(
        replace(config, node_name="someone-else", instance_dir=str(tmp_path / "other"))
    )
    assert domains(other) == set()
    other.reconcile()  # neither its recovery nor its monitor touches our domain
    assert domains(nc) == {mine.instance_id}
    nc.terminate_instance(mine.instance_id)


def test_reboot_needs_a_running_instance(nc: NodeController, image: ImageRef) -> None:
    instance = launched(nc, new(image))
    assert nc.reboot_instance(instance.instance_id).state is NcState.RUNNING
    nc.terminate_instance(instance.instance_id)
    with pytest.raises(IncorrectInstanceState, match="terminated, not running"):
        nc.reboot_instance(instance.instance_id)


def test_terminate_during_a_download_stops_it_and_frees_at_once(
    nc: NodeController, image: ImageRef, file_server: FileServer
) -> None:
    file_server.bytes_per_s = 64 << 10  # the 16 MiB image would take minutes
    instance = new(image)
    nc.run_instance(instance)
    wait_until(lambda: bool(file_server.gets), 10, "the download to start")
    assert nc.describe_resource()["cores_available"] == 1

    terminated = nc.terminate_instance(instance.instance_id)

    assert terminated.state is NcState.TERMINATED and terminated.state_reason == "user request"
    assert terminated.failure is None
    assert nc.describe_resource()["cores_available"] == 2
    assert leftovers(nc) == [] and domains(nc) == set()
    wait_until(lambda: not list(nc.images.directory.iterdir()), 10, "the .part to go")
    wait_until(lambda: file_server.aborted["/root.raw"] == 1, 10, "the download to stop")


def test_terminate_of_a_queued_launch(
    config: NcConfig, image: ImageRef, file_server: FileServer
) -> None:
    nc = NodeController(replace(config, launch_workers=1))
    file_server.bytes_per_s = 64 << 10
    first, queued = new(image), new(image)
    nc.run_instance(first)
    nc.run_instance(queued)  # waits for the one launch worker
    assert nc.terminate_instance(queued.instance_id).state is NcState.TERMINATED
    assert nc.terminate_instance(first.instance_id).state is NcState.TERMINATED
    assert nc.describe_resource()["instances"] == 0 and leftovers(nc) == []


def test_failed_teardown_is_retried_by_the_monitor(
    nc: NodeController, image: ImageRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = launched(nc, new(image))
    real_destroy = nc.hypervisor.destroy

    def destroy_fails_once(name: str) -> None:
        monkeypatch.setattr(nc.hypervisor, "destroy", real_destroy)
        raise HypervisorError("libvirt said no")

    monkeypatch.setattr(nc.hypervisor, "destroy", destroy_fails_once)
    with pytest.raises(HypervisorError):
        nc.terminate_instance(instance.instance_id)
    stuck = state_of(nc, instance.instance_id)
    assert stuck.state is NcState.TEARDOWN
    assert nc.describe_resource()["instances"] == 1  # still holds what it was promised
    nc.reconcile()
    done = settle(nc, instance.instance_id, NcState.TERMINATED)
    assert done.state_reason == "user request"
    assert domains(nc) == set() and leftovers(nc) == []


def test_a_domain_that_will_not_die_holds_up_no_other(
    nc: NodeController, image: ImageRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt hangs destroying one domain: the monitor still tears down another."""
    stuck, other = launched(nc, new(image)), launched(nc, new(image))
    released = threading.Event()
    real_destroy = nc.hypervisor.destroy

    def destroy(name: str) -> None:
        if name == stuck.instance_id:
            released.wait(30)
        real_destroy(name)

    monkeypatch.setattr(nc.hypervisor, "destroy", destroy)
    conn = libvirt.open("test:///default")
    for instance in (stuck, other):
        conn.lookupByName(instance.instance_id).destroy()  # both guests stop
    try:
        nc.reconcile()
        settle(nc, other.instance_id, NcState.TERMINATED)
        nc.reconcile()  # a second pass while the first teardown still hangs
        assert state_of(nc, stuck.instance_id).state is NcState.RUNNING
    finally:
        released.set()
    settle(nc, stuck.instance_id, NcState.TERMINATED)


def test_unreadable_record_is_left_alone(
    config: NcConfig, nc: NodeController, image: ImageRef
) -> None:
    instance = launched(nc, new(image))
    record = nc.store.directory(instance.instance_id) / "instance.json"
    record.write_text('{"written by": "a future version"}')
    restarted = NodeController(config)
    assert restarted.describe_instances() == []
    assert domains(restarted) == {instance.instance_id}  # not destroyed
    assert nc.store.directory(instance.instance_id).exists()  # not removed
