"""The NC's operations (the seed's runInstance, describeInstances, terminateInstance,
rebootInstance, getConsoleOutput, describeResource, startNetwork) and its recovery.

libvirt is the ground truth for what runs; the instance table here is what the NC
promised (admitted instances hold their instance type's resources from admission on).
One lock guards the table and every change to an instance's folder, so a record is
never written into a folder being removed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from mallee.common.capacity import Capacity
from mallee.common.config import NcConfig
from mallee.common.errors import (
    IncorrectInstanceState,
    InstanceAlreadyExists,
    InstanceNotFound,
    InsufficientResources,
    InvalidParameter,
    LaunchFailed,
    MalleeError,
    NetworkInUse,
    NetworkNotStarted,
)
from mallee.nc import disks, resources
from mallee.nc.domain import DomainSpec, NicSpec, render_domain_xml
from mallee.nc.hypervisor import Hypervisor, choose_virt_type
from mallee.nc.images import ImageCache
from mallee.nc.model import LIVE_STATES, Instance, NcState, NetConfig
from mallee.nc.network import Networks
from mallee.nc.store import InstanceStore

logger = logging.getLogger(__name__)

# Kernel command lines for images booted from a kernel, unless kernel_cmdline is set.
DEFAULT_CMDLINE = {
    "kvm": "console=ttyS0 root=/dev/vda",
    "qemu": "console=ttyS0 root=/dev/vda",
    "xen": "console=hvc0 root=/dev/xvda",
}


class NodeController:
    def __init__(self, config: NcConfig) -> None:
        self.config = config
        self.virt_type = choose_virt_type(config.hypervisor, config.libvirt_uri)
        self.hypervisor = Hypervisor(config.libvirt_uri, config.node_name)
        self.store = InstanceStore(Path(config.instance_dir))
        self.images = ImageCache(
            Path(config.image_cache_dir),
            config.image_cache_mb * disks.MiB,
            self._images_in_use,
            config.image_fetch_timeout_s,
        )
        self.networks = Networks(config.private_bridge_prefix)
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._launching: set[str] = set()
        logger.info("node %s uses virt type %s", config.node_name, self.virt_type)
        self.recover()

    # -- helpers (callers hold self._lock where noted) ----------------------------------

    def _images_in_use(self) -> set[str]:
        with self._lock:
            live = [i for i in self._instances.values() if i.state in LIVE_STATES]
        return {image.sha256 for i in live for image in i.images}

    def _get(self, instance_id: str) -> Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise InstanceNotFound(f"instance {instance_id} is not on this node") from None

    def _set(self, instance: Instance) -> Instance:
        """Record a new state in the table and, unless terminated, on disk. Lock held."""
        self._instances[instance.instance_id] = instance
        if instance.state is not NcState.TERMINATED:
            self.store.save(instance)
        return instance

    def _capacity(self) -> tuple[Capacity, Capacity]:
        """(maximum, available). Lock held."""
        committed = [i.vm_type for i in self._instances.values() if i.state in LIVE_STATES]
        return resources.capacity(self.config, committed)

    def _console_path(self, instance_id: str) -> Path:
        if self.virt_type == "xen":  # written by xenconsoled --log=guest
            return Path(f"/var/log/xen/console/guest-{instance_id}.log")
        return self.store.directory(instance_id) / "console.log"

    def _nics(self, net: NetConfig) -> tuple[NicSpec, ...]:
        nics = []
        if net.public_mac:
            if not self.config.public_bridge:
                raise InvalidParameter(
                    "net.public_mac given, but this node has no public_bridge configured"
                )
            bridge = None if self.config.public_bridge == "user" else self.config.public_bridge
            nics.append(NicSpec(net.public_mac, bridge))
        if net.private_mac:
            if net.vlan is None:
                raise InvalidParameter("net.private_mac needs net.vlan")
            if not self.networks.is_started(net.vlan):
                raise NetworkNotStarted(f"the network of VLAN {net.vlan} is not started here")
            nics.append(NicSpec(net.private_mac, self.networks.bridge(net.vlan)))
        return tuple(nics)

    # -- runInstance --------------------------------------------------------------------

    def run_instance(self, instance: Instance) -> Instance:
        """Admit, fetch images, make disks, start the domain; on failure leave nothing."""
        if self.virt_type == "xen" and instance.kernel is None:
            raise InvalidParameter("this node runs Xen paravirtual guests: a kernel is needed")
        nics = self._nics(instance.net)
        instance_id = instance.instance_id
        with self._lock:
            if instance_id in self._instances or self.store.exists(instance_id):
                raise InstanceAlreadyExists(f"instance {instance_id} already exists")
            _, left = self._capacity()
            if not left.fits(instance.vm_type):
                vm = instance.vm_type
                raise InsufficientResources(
                    f"{vm.name} needs {vm.cores} cores, {vm.memory_mb} MiB, {vm.disk_gb} GiB; "
                    f"this node has {left.cores} cores, {left.memory_mb} MiB, "
                    f"{left.disk_gb} GiB available"
                )
            self.store.create(instance)
            self._instances[instance_id] = instance
            self._launching.add(instance_id)
        try:
            return self._launch(instance, nics)
        except Exception as e:
            self._abort(instance_id)
            if isinstance(e, MalleeError):
                raise
            logger.exception("launch of %s failed", instance_id)
            raise LaunchFailed(f"launch of {instance_id} failed: {e}") from e
        finally:
            with self._lock:
                self._launching.discard(instance_id)

    def _launch(self, instance: Instance, nics: tuple[NicSpec, ...]) -> Instance:
        path = {image.sha256: self.images.fetch(image) for image in instance.images}
        directory = self.store.directory(instance.instance_id)
        instance_disks = disks.create(
            directory,
            path[instance.image.sha256],
            instance.image.format,
            instance.vm_type.disk_gb,
            self.config.swap_mb,
        )
        kernel = path[instance.kernel.sha256] if instance.kernel else None
        ramdisk = path[instance.ramdisk.sha256] if instance.ramdisk else None
        spec = DomainSpec(
            name=instance.instance_id,
            virt_type=self.virt_type,
            memory_mb=instance.vm_type.memory_mb,
            vcpus=instance.vm_type.cores,
            node=self.config.node_name,
            owner=instance.owner_id,
            disks=instance_disks,
            nics=nics,
            kernel=str(kernel) if kernel else None,
            ramdisk=str(ramdisk) if ramdisk else None,
            cmdline=instance.kernel_cmdline
            or self.config.kernel_cmdline
            or DEFAULT_CMDLINE[self.virt_type],
            console_log=None if self.virt_type == "xen" else str(directory / "console.log"),
        )
        xml = render_domain_xml(spec)
        (directory / "domain.xml").write_text(xml)
        self.hypervisor.start(xml)
        with self._lock:
            current = self._instances[instance.instance_id]
            if current.state is NcState.STAGING:
                return self._set(current.with_state(NcState.RUNNING))
        # terminateInstance arrived while we were staging: finish what it asked for
        return self._teardown(instance.instance_id, "terminated while pending")

    def _abort(self, instance_id: str) -> None:
        """Undo a failed launch: no domain, no folder, no reservation. Should the domain
        not go away, the instance stays in teardown for the monitor to finish."""
        try:
            self.hypervisor.destroy(instance_id)
        except MalleeError:
            logger.exception("%s: the failed launch's domain would not go; will retry", instance_id)
            with self._lock:
                self._set(self._get(instance_id).with_state(NcState.TEARDOWN, "launch failed"))
            return
        with self._lock:
            self.store.remove(instance_id)
            if self._get(instance_id).state is NcState.TEARDOWN:  # a terminate came meanwhile
                self._set(self._get(instance_id).with_state(NcState.TERMINATED, "user request"))
            else:
                del self._instances[instance_id]

    # -- the other operations -----------------------------------------------------------

    def describe_instances(self, instance_ids: list[str] | None = None) -> list[Instance]:
        with self._lock:
            if not instance_ids:
                return list(self._instances.values())
            return [self._get(i) for i in instance_ids]

    def terminate_instance(self, instance_id: str) -> Instance:
        with self._lock:
            instance = self._get(instance_id)
            if instance.state in (NcState.TERMINATED, NcState.TEARDOWN):
                return instance
            staging = instance.state is NcState.STAGING
            instance = self._set(instance.with_state(NcState.TEARDOWN, "user request"))
        if staging:  # the launching thread sees TEARDOWN and finishes the job
            return instance
        return self._teardown(instance_id, "user request")

    def _teardown(self, instance_id: str, reason: str) -> Instance:
        self.hypervisor.destroy(instance_id)
        with self._lock:
            instance = self._get(instance_id)
            if instance.state is NcState.TERMINATED:  # another caller finished first
                return instance
            self.store.remove(instance_id)
            if self.virt_type == "xen":
                self._console_path(instance_id).unlink(missing_ok=True)
            return self._set(instance.with_state(NcState.TERMINATED, reason))

    def reboot_instance(self, instance_id: str) -> Instance:
        """A hard reset: the NC cannot know whether the guest honours ACPI."""
        with self._lock:
            instance = self._get(instance_id)
        if instance.state is not NcState.RUNNING:
            raise IncorrectInstanceState(
                f"instance {instance_id} is {instance.state.value}, not running"
            )
        self.hypervisor.reset(instance_id)
        return instance

    def console_output(self, instance_id: str) -> str:
        with self._lock:
            self._get(instance_id)
        path = self._console_path(instance_id)
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - self.config.console_max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def describe_resource(self) -> dict[str, int]:
        with self._lock:
            most, left = self._capacity()
            live = sum(1 for i in self._instances.values() if i.state in LIVE_STATES)
        return resources.describe(most, left, live)

    def start_network(self, vlan: int) -> dict[str, object]:
        return self.networks.start(vlan)

    def stop_network(self, vlan: int) -> None:
        with self._lock:
            users = sorted(
                i.instance_id
                for i in self._instances.values()
                if i.state in LIVE_STATES and i.net.vlan == vlan and i.net.private_mac
            )
        if users:
            raise NetworkInUse(f"VLAN {vlan} still carries instances {users}")
        self.networks.stop(vlan)

    # -- keeping the table true ---------------------------------------------------------

    def reconcile(self) -> None:
        """One monitor pass: instances whose domain stopped are torn down, teardowns that
        failed are retried, terminated ones are forgotten after terminated_retention_s."""
        with self._lock:
            snapshot = [i for i in self._instances.values() if i.instance_id not in self._launching]
        active = self.hypervisor.active_domains()  # listed after the snapshot, see below
        now = time.time()
        for instance in snapshot:
            instance_id = instance.instance_id
            # A RUNNING instance in the snapshot was started before the listing, so its
            # absence means the domain stopped; asking once more guards against a
            # listing that raced with a change.
            if instance.state is NcState.RUNNING and instance_id not in active:
                if not self.hypervisor.is_active(instance_id):
                    logger.info("%s: the guest stopped; cleaning up", instance_id)
                    self._teardown(instance_id, "the guest stopped")
            elif instance.state is NcState.TEARDOWN:
                self._teardown(instance_id, instance.state_reason or "terminated")
            elif (
                instance.state is NcState.TERMINATED
                and instance.terminated_at
                and (now - instance.terminated_at > self.config.terminated_retention_s)
            ):
                with self._lock:
                    self._instances.pop(instance_id, None)

    def recover(self) -> None:
        """Rebuild the table after a restart from the records and libvirt.

        Running instances are kept. A launch or teardown the old process did not finish
        is finished now (torn down), as is an instance whose domain stopped meanwhile.
        This node's domains and folders that have no record at all are removed; those
        with an unreadable record are left alone.
        """
        records, strays, unreadable = self.store.load_all()
        active = self.hypervisor.active_domains()
        for instance in records:
            self._instances[instance.instance_id] = instance
            if instance.state is NcState.RUNNING and instance.instance_id in active:
                continue
            reason = {
                NcState.STAGING: "the node controller restarted during launch",
                NcState.TEARDOWN: instance.state_reason or "terminated",
            }.get(instance.state, "the guest stopped while the node controller was down")
            logger.warning(
                "recovery: %s was %s; %s", instance.instance_id, instance.state.value, reason
            )
            self._teardown(instance.instance_id, reason)
        known = {i.instance_id for i in records} | set(unreadable)
        for name in sorted((active - known) | set(strays)):
            logger.warning("recovery: removing %s, which has no instance record", name)
            self.hypervisor.destroy(name)
            self.store.remove(name)
