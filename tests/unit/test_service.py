"""NodeController on libvirt's test driver: admission, failures that leave nothing behind,
the monitor's reconciliation and recovery after a restart. Real images over loopback HTTP,
real qemu-img disks; only the hypervisor is libvirt's test driver."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from mallee.common.capacity import VmType
from mallee.common.config import NcConfig
from mallee.common.errors import (
    HypervisorError,
    ImageFetchFailed,
    IncorrectInstanceState,
    InstanceAlreadyExists,
    InstanceNotFound,
    InsufficientResources,
    InvalidParameter,
    NetworkNotStarted,
)
from mallee.nc.model import ImageRef, Instance, NcState, NetConfig
from mallee.nc.service import NodeController
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


def new(image: ImageRef, vm: VmType = SMALL, **changes: object) -> Instance:
    instance_id = f"i-{next(_ids):017x}"
    return Instance(instance_id, "r-01234567", "alice", vm, image, **changes)  # type: ignore[arg-type]


def domains(nc: NodeController) -> set[str]:
    return nc.hypervisor.active_domains()


def folders(nc: NodeController) -> list[str]:
    return sorted(p.name for p in nc.store.root.iterdir())


def test_run_describe_terminate(nc: NodeController, image: ImageRef) -> None:
    running = nc.run_instance(new(image))
    assert running.state is NcState.RUNNING
    assert domains(nc) == {running.instance_id}
    assert nc.describe_resource()["cores_available"] == 1
    [described] = nc.describe_instances([running.instance_id])
    assert described == running
    terminated = nc.terminate_instance(running.instance_id)
    assert terminated.state is NcState.TERMINATED and terminated.state_reason == "user request"
    assert domains(nc) == set() and folders(nc) == []
    assert nc.describe_resource()["cores_available"] == 2
    assert nc.terminate_instance(running.instance_id).state is NcState.TERMINATED


def test_duplicate_id(nc: NodeController, image: ImageRef) -> None:
    instance = nc.run_instance(new(image))
    with pytest.raises(InstanceAlreadyExists):
        nc.run_instance(instance)
    assert domains(nc) == {instance.instance_id}


def test_insufficient_resources_leave_nothing(nc: NodeController, image: ImageRef) -> None:
    nc.run_instance(new(image, VmType("m1.large", 2, 512, 1)))
    with pytest.raises(InsufficientResources, match=r"needs 1 cores.*0 cores"):
        nc.run_instance(new(image))
    assert len(folders(nc)) == 1 and len(domains(nc)) == 1
    assert nc.describe_resource()["instances"] == 1


def test_failed_download_leaves_nothing(nc: NodeController, image: ImageRef) -> None:
    missing = ImageRef("emi-87654321", image.url + ".missing", "sha256:" + "0" * 64)
    with pytest.raises(ImageFetchFailed, match="404"):
        nc.run_instance(new(missing))
    assert folders(nc) == [] and domains(nc) == set() and nc.describe_instances() == []
    assert nc.describe_resource()["cores_available"] == 2


def test_disk_too_small_leaves_nothing(config: NcConfig, image: ImageRef) -> None:
    nc = NodeController(replace(config, swap_mb=2048))
    with pytest.raises(InvalidParameter, match="cannot hold"):
        nc.run_instance(new(image))
    assert folders(nc) == [] and domains(nc) == set()


def test_unstarted_network_is_refused(nc: NodeController, image: ImageRef) -> None:
    with pytest.raises(NetworkNotStarted, match="VLAN 4000"):
        nc.run_instance(new(image, net=NetConfig(private_mac="d0:0d:00:00:00:01", vlan=4000)))
    with pytest.raises(InvalidParameter, match="public_bridge"):
        nc.run_instance(new(image, net=NetConfig(public_mac="d0:0d:00:00:00:01")))
    assert folders(nc) == []


def test_unknown_instance(nc: NodeController) -> None:
    for call in (nc.terminate_instance, nc.reboot_instance, nc.console_output):
        with pytest.raises(InstanceNotFound):
            call("i-00000000000000000")
    with pytest.raises(InstanceNotFound):
        nc.describe_instances(["i-00000000000000000"])


def test_monitor_cleans_up_a_stopped_guest(nc: NodeController, image: ImageRef) -> None:
    instance = nc.run_instance(new(image))
    libvirt.open("test:///default").lookupByName(instance.instance_id).destroy()
    nc.reconcile()
    [after] = nc.describe_instances()
    assert after.state is NcState.TERMINATED and after.state_reason == "the guest stopped"
    assert folders(nc) == []


def test_terminated_instances_are_forgotten(config: NcConfig, image: ImageRef) -> None:
    nc = NodeController(replace(config, terminated_retention_s=0))
    instance = nc.run_instance(new(image))
    nc.terminate_instance(instance.instance_id)
    nc.reconcile()
    assert nc.describe_instances() == []


def test_recovery_keeps_running_and_cleans_the_rest(
    config: NcConfig, nc: NodeController, image: ImageRef
) -> None:
    kept = nc.run_instance(new(image))
    vanished = nc.run_instance(new(image))
    libvirt.open("test:///default").lookupByName(vanished.instance_id).destroy()
    # a launch the old process never finished: record written, disks half made
    half = new(image)
    nc.store.create(half)
    (nc.store.directory(half.instance_id) / "root.qcow2").write_bytes(b"partial")
    # a folder without a record, and a domain of this node without either
    (nc.store.root / "i-0000000000000dead").mkdir()
    orphan = new(image)
    kept_xml = (nc.store.directory(kept.instance_id) / "domain.xml").read_text()
    nc.hypervisor.start(kept_xml.replace(kept.instance_id, orphan.instance_id))

    restarted = NodeController(config)

    states = {i.instance_id: i.state for i in restarted.describe_instances()}
    assert states == {
        kept.instance_id: NcState.RUNNING,
        vanished.instance_id: NcState.TERMINATED,
        half.instance_id: NcState.TERMINATED,
    }
    assert domains(restarted) == {kept.instance_id}
    assert folders(restarted) == [kept.instance_id]
    assert restarted.terminate_instance(kept.instance_id).state is NcState.TERMINATED
    assert domains(restarted) == set() and folders(restarted) == []


def test_other_nodes_domains_are_left_alone(
    config: NcConfig, nc: NodeController, image: ImageRef, tmp_path: Path
) -> None:
    mine = nc.run_instance(new(image))
    other = NodeController(
        replace(config, node_name="someone-else", instance_dir=str(tmp_path / "other"))
    )
    assert domains(other) == set()
    other.reconcile()  # neither its recovery nor its monitor touches our domain
    assert domains(nc) == {mine.instance_id}
    nc.terminate_instance(mine.instance_id)


def test_reboot_needs_a_running_instance(nc: NodeController, image: ImageRef) -> None:
    instance = nc.run_instance(new(image))
    assert nc.reboot_instance(instance.instance_id).state is NcState.RUNNING
    nc.terminate_instance(instance.instance_id)
    with pytest.raises(IncorrectInstanceState, match="terminated, not running"):
        nc.reboot_instance(instance.instance_id)


@pytest.fixture(autouse=True)
def _no_domains_left(config: NcConfig) -> object:
    yield
    conn = libvirt.open("test:///default")
    for dom in conn.listAllDomains():
        if dom.name().startswith("i-") and dom.isActive():
            dom.destroy()


def test_terminate_while_staging(
    nc: NodeController, image: ImageRef, file_server: FileServer
) -> None:
    file_server.delay_s = 1.0  # the launch sits in its image download
    instance = new(image)
    results: list[Instance] = []
    launch = threading.Thread(target=lambda: results.append(nc.run_instance(instance)))
    launch.start()
    while not nc.describe_instances():
        time.sleep(0.01)
    assert nc.terminate_instance(instance.instance_id).state is NcState.TEARDOWN
    launch.join()
    assert results[0].state is NcState.TERMINATED
    assert results[0].state_reason == "terminated while pending"
    assert domains(nc) == set() and folders(nc) == []
    assert nc.describe_resource()["instances"] == 0


def test_failed_teardown_is_retried_by_the_monitor(
    nc: NodeController, image: ImageRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = nc.run_instance(new(image))
    real_destroy = nc.hypervisor.destroy

    def destroy_fails_once(name: str) -> None:
        monkeypatch.setattr(nc.hypervisor, "destroy", real_destroy)
        raise HypervisorError("libvirt said no")

    monkeypatch.setattr(nc.hypervisor, "destroy", destroy_fails_once)
    with pytest.raises(HypervisorError):
        nc.terminate_instance(instance.instance_id)
    [stuck] = nc.describe_instances()
    assert stuck.state is NcState.TEARDOWN
    assert nc.describe_resource()["instances"] == 1  # still holds what it was promised
    nc.reconcile()
    [done] = nc.describe_instances()
    assert done.state is NcState.TERMINATED and done.state_reason == "user request"
    assert domains(nc) == set() and folders(nc) == []


def test_unreadable_record_is_left_alone(
    config: NcConfig, nc: NodeController, image: ImageRef
) -> None:
    instance = nc.run_instance(new(image))
    record = nc.store.directory(instance.instance_id) / "instance.json"
    record.write_text('{"written by": "a future version"}')
    restarted = NodeController(config)
    assert restarted.describe_instances() == []
    assert domains(restarted) == {instance.instance_id}  # not destroyed
    assert folders(restarted) == [instance.instance_id]  # not removed
