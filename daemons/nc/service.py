"""The NC's operations (the seed's runInstance, describeInstances, terminateInstance,
rebootInstance, getConsoleOutput, describeResource, startNetwork) and its recovery.

libvirt is the ground truth for what runs; the instance table here is what the NC
promised (admitted instances hold their instance type's resources from admission on).
runInstance admits and answers at once; the launch (images, disks, domain) runs in a
bounded pool apart from the request threads, and its outcome shows in the instance's
state, reason and failure. One lock guards the table and every change to an instance's
folder, so a record is never written into a folder being removed.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mallee.common.capacity import Capacity
from mallee.common.errors import (
    HypervisorUnavailable,
    IncorrectInstanceState,
    InstanceAlreadyExists,
    InstanceNotFound,
    InsufficientResources,
    InvalidParameter,
    LaunchFailed,
    MalleeError,
    NetworkInUse,
    NetworkNotStarted,
    NetworkSetupFailed,
    SecurityGroupInUse,
    SecurityGroupNotFound,
)
from mallee.common.networks import Networks
from mallee.common.overlay import Overlay, VxlanOverlay
from mallee.common.rpc import ClientTLS
from mallee.common.vde import VdeOverlay
from mallee.nc import disks, hostcheck, resources
from mallee.nc.config import NcConfig
from mallee.nc.domain import DomainSpec, NicSpec, render_domain_xml
from mallee.nc.firewall import Firewall, Port
from mallee.nc.hypervisor import Hypervisor, choose_virt_type
from mallee.nc.images import Cancellation, ImageCache, LaunchCancelled
from mallee.nc.model import LIVE_STATES, Failure, Instance, NcState, SecurityGroup
from mallee.nc.store import MARKER, InstanceStore

logger = logging.getLogger(__name__)

# Kernel command lines for images booted from a kernel, unless kernel_cmdline is set.
DEFAULT_CMDLINE = {
    "kvm": "console=ttyS0 root=/dev/vda",
    "qemu": "console=ttyS0 root=/dev/vda",
    "xen": "console=hvc0 root=/dev/xvda",
}
# How long terminateInstance waits for a cancelled launch to wind down before it answers
# (shutting-down, then; the launch finishes the teardown).
CANCEL_WAIT_S = 10.0
FIREWALL_FILE = ".security-groups.json"  # in instance_dir: the groups the CC put
VDE_FOLDER = ".vde"  # in instance_dir: the VDE switch's sockets
TEARDOWN_WORKERS = 16  # a destroy that hangs holds one; the others go on


TAP_PREFIXES = {"public": "mtp", "private": "mtv"}


def tap_name(instance_id: str, role: str) -> str:
    """The tap of an instance's public or private NIC: at most 15 characters, as Linux
    wants; libvirt's own ``vnetN`` would change at every start."""
    return TAP_PREFIXES[role] + instance_id.removeprefix("i-")[-11:]


class RefusedToStart(RuntimeError):
    """Starting would risk destroying what this NC cannot prove is its own."""


@dataclass
class _Launch:
    """A launch admitted and not finished: what it needs and how to stop it."""

    nics: tuple[NicSpec, ...]
    cancellation: Cancellation = field(default_factory=Cancellation)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # taken up by a launch worker (else: queued)
    domain_may_exist: bool = False


class NodeController:
    def __init__(self, config: NcConfig, image_tls: ClientTLS | None = None) -> None:
        """``image_tls``: the NC's certificate, shown to the CLC's image store and to the
        CC on a VDE wire."""
        self.config = config
        self.virt_type = choose_virt_type(config.hypervisor, config.libvirt_uri)
        self.hypervisor = Hypervisor(config.libvirt_uri, config.node_name)
        self.store = InstanceStore(Path(config.instance_dir))
        self.images = ImageCache(
            Path(config.image_cache_dir),
            config.image_cache_mb * disks.MiB,
            self._images_in_use,
            config.image_fetch_timeout_s,
            image_tls,
        )
        self.networks = Networks(config.private_bridge_prefix, _overlay(config, image_tls))
        self.firewall = Firewall(config.node_name, Path(config.instance_dir) / FIREWALL_FILE)
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._launches: dict[str, _Launch] = {}
        self._tearing_down: set[str] = set()
        self._launcher = ThreadPoolExecutor(config.launch_workers, "nc-launch")
        self._teardowns = ThreadPoolExecutor(TEARDOWN_WORKERS, "nc-teardown")
        logger.info("node %s uses virt type %s", config.node_name, self.virt_type)
        self._own_folder = self._claim_folder()
        # Set when libvirt, back after a start without it, showed domains of this node
        # that instance_dir has no record of: the NC then serves no instance.
        self._refusal = ""
        records, self._stray_folders, self._unreadable = self.store.load_all()
        self._instances = {i.instance_id: i for i in records}
        # When terminated instances are forgotten, on the monotonic clock: a step of the
        # wall clock neither hides one early nor keeps it longer. A record from before a
        # restart has only its wall-clock time, read once here.
        self._forget_at: dict[str, float] = {}
        for instance in records:
            if instance.state is NcState.TERMINATED:
                age = time.time() - (instance.terminated_at or time.time())
                age = min(max(age, 0.0), self._retention_s)
                self._forget_at[instance.instance_id] = time.monotonic() + self._retention_s - age
        self._recovered = False
        self._refresh_firewall()  # the rules the live instances need, before anything else
        try:
            self.recover_domains(at_start=True)
        except HypervisorUnavailable as e:
            logger.warning("starting without libvirt: %s; recovery waits for it", e.message)

    # -- helpers (callers hold self._lock where noted) ----------------------------------

    @property
    def _retention_s(self) -> float:
        return float(self.config.terminated_retention_s)

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
        """Record a new state in the table and on disk; a terminated instance keeps only
        its record there. Lock held."""
        self._instances[instance.instance_id] = instance
        if instance.state is NcState.TERMINATED:
            self._forget_at[instance.instance_id] = time.monotonic() + self._retention_s
            self.store.retire(instance)
            if self.virt_type == "xen":
                self._console_path(instance.instance_id).unlink(missing_ok=True)
        else:
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

    def _nics(self, instance: Instance) -> tuple[NicSpec, ...]:
        """The instance's NICs; each bridged one on a tap named after the instance and
        its role, which the firewall's rules name."""
        net, nics = instance.net, []
        if net.public_mac:
            if not self.config.public_bridge:
                raise InvalidParameter(
                    "net.public_mac given, but this node has no public_bridge configured"
                )
            if self.config.public_bridge == "user":
                nics.append(NicSpec(net.public_mac))
            else:
                tap = tap_name(instance.instance_id, "public")
                nics.append(NicSpec(net.public_mac, self.config.public_bridge, tap))
        if net.private_mac:
            if net.vlan is None:
                raise InvalidParameter("net.private_mac needs net.vlan")
            if not self.networks.is_started(net.vlan):
                raise NetworkNotStarted(f"the network of VLAN {net.vlan} is not started here")
            tap = tap_name(instance.instance_id, "private")
            nics.append(NicSpec(net.private_mac, self.networks.bridge(net.vlan), tap))
        return tuple(nics)

    def _ports(self) -> list[Port]:
        """The firewall's view of the live instances' bridged NICs."""
        with self._lock:
            live = [i for i in self._instances.values() if i.state in LIVE_STATES]
        ports = []
        for instance in live:
            net = instance.net
            for role, mac, address in (
                ("public", net.public_mac, net.public_ip),
                ("private", net.private_mac, net.private_ip),
            ):
                if mac and (role == "private" or self.config.public_bridge != "user"):
                    addresses = (address,) if address else ()
                    device = tap_name(instance.instance_id, role)
                    ports.append(Port(device, mac, addresses, net.security_groups))
        return ports

    def _refresh_firewall(self) -> None:
        """Make the node's rules those of its live instances now. Never called with
        self._lock held: the firewall takes its own lock first, then this one."""
        self.firewall.apply(self._ports)

    # -- runInstance --------------------------------------------------------------------

    def run_instance(self, instance: Instance) -> Instance:
        """Admit the instance and queue its launch; answer at once (pending). What can
        be known now is refused now: a bad request, no room, libvirt not answering."""
        if self.virt_type == "xen" and instance.kernel is None:
            raise InvalidParameter("this node runs Xen paravirtual guests: a kernel is needed")
        nics = self._nics(instance)
        unknown = sorted(set(instance.net.security_groups or ()) - set(self.firewall.groups))
        if unknown:
            raise SecurityGroupNotFound(
                f"security groups {unknown} are not known on this node (put them first)"
            )
        self.hypervisor.check()
        if self.problem:
            raise HypervisorUnavailable(self.problem)
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
            launch = self._launches[instance_id] = _Launch(nics)
        context = contextvars.copy_context()  # the launch logs the caller's request id
        self._launcher.submit(context.run, self._run_launch, instance, launch)
        return instance

    def _run_launch(self, instance: Instance, launch: _Launch) -> None:
        """The launch, on a thread of the pool: running, or terminated with its failure
        and nothing of it left (no domain, no disks, no reservation)."""
        instance_id = instance.instance_id
        with self._lock:
            if launch.cancellation.cancelled:  # terminated while it waited for the pool
                return
            launch.started = True
        try:
            self._launch(instance, launch)
            with self._lock:
                if self._get(instance_id).state is NcState.STAGING:
                    # Running and no longer a launch in one step: a terminate from now
                    # on tears the domain down itself.
                    self._launches.pop(instance_id, None)
                    self._set(self._get(instance_id).with_state(NcState.RUNNING))
                    return
            raise LaunchCancelled()  # terminated while the domain was being started
        except LaunchCancelled:
            self._abort(instance_id, launch, None)
        except MalleeError as e:
            logger.warning("launch of %s failed: %s: %s", instance_id, e.code, e.message)
            self._abort(instance_id, launch, Failure(e.code, e.message, e.status))
        except Exception as e:
            logger.exception("launch of %s failed", instance_id)
            message = (
                f"the launch of {instance_id} failed on this node ({type(e).__name__}; "
                "the node's log has the details)"
            )
            self._abort(instance_id, launch, Failure(LaunchFailed.code, message, 500))
        finally:
            with self._lock:
                self._launches.pop(instance_id, None)
            launch.done.set()

    def _launch(self, instance: Instance, launch: _Launch) -> None:
        path = {
            image.sha256: self.images.fetch(image, launch.cancellation) for image in instance.images
        }
        launch.cancellation.check()
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
            nics=launch.nics,
            kernel=str(kernel) if kernel else None,
            ramdisk=str(ramdisk) if ramdisk else None,
            cmdline=instance.kernel_cmdline
            or self.config.kernel_cmdline
            or DEFAULT_CMDLINE[self.virt_type],
            console_log=None if self.virt_type == "xen" else str(directory / "console.log"),
            product=instance.vm_type.name,
        )
        xml = render_domain_xml(spec)
        (directory / "domain.xml").write_text(xml)
        self._refresh_firewall()  # its rules hold before its first packet
        launch.cancellation.check()
        launch.domain_may_exist = True
        self.hypervisor.start(xml)

    def _abort(self, instance_id: str, launch: _Launch, failure: Failure | None) -> None:
        """Undo a launch that failed or was cancelled. Should its domain not go away,
        the instance stays in teardown for the monitor to finish."""
        with self._lock:
            cancelled = self._get(instance_id).state is NcState.TEARDOWN
        reason = "user request" if cancelled or failure is None else "launch failed"
        if launch.domain_may_exist:
            try:
                self.hypervisor.destroy(instance_id)
            except MalleeError:
                logger.exception("%s: the launch's domain would not go; will retry", instance_id)
                with self._lock:
                    instance = self._get(instance_id)
                    self._set(instance.with_state(NcState.TEARDOWN, reason, failure))
                return
        with self._lock:
            self._set(self._get(instance_id).with_state(NcState.TERMINATED, reason, failure))
        self._refresh_firewall()

    # -- the other operations -----------------------------------------------------------

    @property
    def problem(self) -> str:
        """Why this node cannot vouch for its domains now ("" while it can). Between
        libvirt answering again and the monitor's recovery pass, the records are not yet
        checked against it, and a launch admitted then could be taken for one the old
        process left unfinished."""
        if self.hypervisor.problem or self._refusal:
            return self.hypervisor.problem or self._refusal
        if not self._recovered:
            return "libvirt answers again; the node controller is still recovering its instances"
        return ""

    def describe_instances(self, instance_ids: list[str] | None = None) -> list[Instance]:
        """The table, unless libvirt does not answer: then no running state can be
        vouched for, and the caller is told so rather than shown stale states."""
        if self.problem:
            raise HypervisorUnavailable(self.problem)
        with self._lock:
            if not instance_ids:
                return list(self._instances.values())
            return [self._get(i) for i in instance_ids]

    def terminate_instance(self, instance_id: str) -> Instance:
        with self._lock:
            instance = self._get(instance_id)
            if instance.state is NcState.TERMINATED:
                return instance
            launch = self._launches.get(instance_id)
            if launch is not None and not launch.started:  # still queued: nothing made
                launch.cancellation.cancel()
                del self._launches[instance_id]
                launch.done.set()
                instance = self._set(instance.with_state(NcState.TERMINATED, "user request"))
                queued = True
            else:
                queued = False
                if instance.state is not NcState.TEARDOWN:
                    instance = self._set(instance.with_state(NcState.TEARDOWN, "user request"))
        if queued:
            self._refresh_firewall()
            return instance
        if launch is not None:  # stop the launch; it undoes what it made
            launch.cancellation.cancel()
            launch.done.wait(CANCEL_WAIT_S)
            with self._lock:
                return self._get(instance_id)
        return self._teardown(instance_id, instance.state_reason or "user request")

    def _teardown(self, instance_id: str, reason: str) -> Instance:
        self.hypervisor.destroy(instance_id)
        with self._lock:
            instance = self._get(instance_id)
            if instance.state is NcState.TERMINATED:  # another caller finished first
                return instance
            instance = self._set(instance.with_state(NcState.TERMINATED, reason))
        self._refresh_firewall()
        return instance

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

    def describe_resource(self) -> dict[str, object]:
        with self._lock:
            most, left = self._capacity()
            live = sum(1 for i in self._instances.values() if i.state in LIVE_STATES)
        return {
            **resources.describe(most, left, live),
            "hypervisor_reachable": not self.problem,
            "hypervisor_error": self.problem,
            "overlay_address": self.networks.overlay.local if self.networks.overlay else "",
        }

    def start_network(self, vlan: int, peers: list[str]) -> dict[str, object]:
        if problem := hostcheck.bridge_filtering_problem():
            raise NetworkSetupFailed(problem)
        return self.networks.start(vlan, peers)

    def put_security_group(self, group: SecurityGroup) -> None:
        self.firewall.put_group(group, self._ports)

    def delete_security_group(self, group_id: str) -> None:
        if group_id not in self.firewall.groups:
            raise SecurityGroupNotFound(f"security group {group_id} is not known on this node")
        with self._lock:
            users = sorted(
                i.instance_id
                for i in self._instances.values()
                if i.state in LIVE_STATES and group_id in (i.net.security_groups or ())
            )
        if users:
            raise SecurityGroupInUse(f"security group {group_id} is used by instances {users}")
        self.firewall.delete_group(group_id, self._ports)

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
        failed are retried, terminated ones are forgotten after terminated_retention_s.
        Each teardown runs apart, so one domain that will not die holds up no other."""
        try:
            if not self._recovered:
                self.recover_domains(at_start=False)
            with self._lock:
                snapshot = [
                    i for i in self._instances.values() if i.instance_id not in self._launches
                ]
            active = self.hypervisor.active_domains()  # listed after the snapshot, see below
        except HypervisorUnavailable:
            return  # said once by the hypervisor; describeResource says it too
        now = time.monotonic()
        for instance in snapshot:
            instance_id = instance.instance_id
            # A RUNNING instance in the snapshot was started before the listing, so its
            # absence means the domain stopped; asking once more guards against a
            # listing that raced with a change.
            if instance.state is NcState.RUNNING and instance_id not in active:
                self._tear_down_apart(instance_id, "the guest stopped", recheck=True)
            elif instance.state is NcState.TEARDOWN:
                self._tear_down_apart(instance_id, instance.state_reason or "terminated")
            elif instance.state is NcState.TERMINATED and now >= self._forget_at[instance_id]:
                with self._lock:
                    self._instances.pop(instance_id, None)
                    self._forget_at.pop(instance_id, None)
                    self.store.remove(instance_id)

    def _tear_down_apart(self, instance_id: str, reason: str, recheck: bool = False) -> None:
        """Tear an instance down on the teardown pool, unless that is under way already."""
        with self._lock:
            if instance_id in self._tearing_down:
                return
            self._tearing_down.add(instance_id)

        def run() -> None:
            try:
                if recheck:
                    if self.hypervisor.is_active(instance_id):
                        return
                    logger.info("%s: the guest stopped; cleaning up", instance_id)
                self._teardown(instance_id, reason)
            except MalleeError as e:
                logger.error("%s: teardown failed, will retry: %s", instance_id, e.message)
            except Exception:
                logger.exception("%s: teardown failed, will retry", instance_id)
            finally:
                with self._lock:
                    self._tearing_down.discard(instance_id)

        self._teardowns.submit(run)

    def _destroy_orphan(self, name: str) -> None:
        """A domain of this node without a record (its launch was never recorded). On
        the teardown pool: one that will not die holds up neither the start nor others;
        the next restart tries again."""
        logger.warning("recovery: destroying domain %s, which has no instance record", name)
        try:
            self.hypervisor.destroy(name)
        except MalleeError as e:
            logger.error("recovery: %s would not go: %s", name, e.message)

    def _claim_folder(self) -> bool:
        """Whether ``instance_dir`` is provably the folder this node used before: its
        marker names this node, or it holds records of instances (a folder from before
        markers). Raises RefusedToStart for another node's folder."""
        owner = self.store.owner()
        node = self.config.node_name
        if owner is not None and owner != node:
            raise RefusedToStart(
                f"instance_dir {self.store.root} belongs to node {owner!r} (its {MARKER} "
                f"says so), not to {node!r}: set node_name or instance_dir to what this "
                "node used before"
            )
        if owner is None and self.store.has_records():
            self.store.mark(node)
        return owner == node or self.store.has_records()

    def recover_domains(self, at_start: bool) -> None:
        """After a restart, make libvirt and the records agree (once libvirt answers).

        Running instances are kept. A launch or teardown the old process did not finish
        is finished now (torn down), as is an instance whose domain stopped meanwhile.
        This node's domains without a record are destroyed, and folders without a
        record removed, only in a folder this node provably used before; records that
        cannot be read are left alone with their domains. Each instance is handled
        apart: one that fails is logged and retried by the monitor.
        """
        active = self.hypervisor.active_domains()
        if not self._own_folder:
            if active:
                sentence = (
                    f"instance_dir {self.store.root} has no record of the domains this node "
                    f"({self.config.node_name}) runs: {sorted(active)}. It is not the folder "
                    "this node used before, or it is not mounted. Set instance_dir to that "
                    "folder (or mount it); if those guests are to go, destroy them yourself "
                    "(virsh destroy)."
                )
                if at_start:
                    logger.critical("refusing to start: %s", sentence)
                    raise RefusedToStart(sentence)
                # Started while libvirt was away: too late to refuse to start, so refuse
                # to serve (the CC sees the node degraded) until restarted on the right
                # folder. Those guests are not counted anywhere: no launch may join them.
                logger.critical("serving no instance: %s", sentence)
                self._refusal = f"this node serves no instance: {sentence}"
                self._recovered = True
                return
            self.store.mark(self.config.node_name)
            self._own_folder = True
        with self._lock:
            records = [
                i
                for i in self._instances.values()
                if i.state is not NcState.TERMINATED and i.instance_id not in self._launches
            ]
        for instance in records:
            if instance.state is NcState.RUNNING and instance.instance_id in active:
                continue
            reason = {
                NcState.STAGING: "the node controller restarted during launch",
                NcState.TEARDOWN: instance.state_reason or "terminated",
            }.get(instance.state, "the guest stopped while the node controller was down")
            logger.warning(
                "recovery: %s was %s; %s", instance.instance_id, instance.state.value, reason
            )
            with self._lock:
                self._set(instance.with_state(NcState.TEARDOWN, reason))
            self._tear_down_apart(instance.instance_id, reason)
        known = set(self._instances) | set(self._unreadable)
        for name in sorted(active - known):
            self._teardowns.submit(self._destroy_orphan, name)
        for name in self._stray_folders:
            logger.warning("recovery: removing folder %s, which has no instance record", name)
            self.store.remove(name)
        self._stray_folders = []
        self._recovered = True


def _overlay(config: NcConfig, tls: ClientTLS | None) -> Overlay | None:
    """The private overlay's backend as ``[nc] overlay`` asks (app.py checked it)."""
    if config.overlay == "vxlan":
        return VxlanOverlay(config.overlay_address)
    if config.overlay == "vde":
        return VdeOverlay(Path(config.instance_dir) / VDE_FOLDER, config.overlay_address, tls)
    return None
