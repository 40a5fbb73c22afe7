"""The CC's operations: the seed's runInstances, describeInstances, terminateInstances,
rebootInstances, getConsoleOutput and describeResources, the node registry, and the
poll that keeps the CC's picture of its NCs.

What the NCs report is ground truth: the CC keeps only each node's last report (so a
restart while a node is down still lists its instances), and its first poll refreshes
them. One lock guards the node states and reservations; no call to an NC is made
while holding it. Times that order events are monotonic, so a step of the wall clock
changes nothing a caller sees.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mallee.cc import metadataproxy, privatenet, scheduler, vlans
from mallee.cc.addresses import AddressPair
from mallee.cc.config import CcConfig
from mallee.cc.groups import GroupStore
from mallee.cc.model import Health, Node, NodeState, Reservation, instance_view
from mallee.cc.peering import ClusterPeering, peering_problem
from mallee.cc.privatenet import PrivateNetworks
from mallee.cc.publicnet import ElasticAddressNotFound, NoPublicNetwork, PublicNetwork
from mallee.cc.registry import NodeRegistry
from mallee.cc.router import metadata_target
from mallee.cc.vlans import OverlayControl
from mallee.common import slices
from mallee.common.capacity import VmType
from mallee.common.config import ConfigError
from mallee.common.errors import (
    HypervisorUnavailable,
    InstanceAlreadyExists,
    InstanceNotFound,
    InsufficientResources,
    LaunchFailed,
    MalleeError,
    NodeInUse,
    NodeNotFound,
    NodesUnavailable,
    SecurityGroupNotFound,
)
from mallee.common.metrics import Metrics
from mallee.common.overlay import Overlay, VxlanOverlay, overlay_problem
from mallee.common.rpc import ClientTLS, RemoteError, RpcClient, Unreachable
from mallee.common.vde import VdeOverlay
from mallee.nc.client import NcClient, NcInstance
from mallee.nc.model import NcState, SecurityGroup

logger = logging.getLogger(__name__)

# How often a dispatch asks the NC how its launch goes.
LAUNCH_POLL_S = 0.25
# Nodes polled at once after the calls that changed them (a batch spreads over many).
REFRESH_WORKERS = 16


def _as_error(error: Exception) -> MalleeError:
    if isinstance(error, MalleeError):
        return error
    logger.exception("unexpected error", exc_info=error)
    return LaunchFailed(f"{type(error).__name__}: {error}")


class _LaunchLost(Exception):
    """The NC may hold the instance, and the CC cannot make sure it does not: sending
    it elsewhere could run it twice."""

    def __init__(self, error: MalleeError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class NodeClients:
    """Three clients per node: polls never retry (a cycle must stay bounded), runs are
    never repeated (not idempotent), other calls retry what is safe."""

    poll: NcClient
    run: NcClient
    call: NcClient


class ClusterController:
    def __init__(
        self,
        config: CcConfig,
        tls_files: ClientTLS | None,
        metrics: Metrics,
        make_client: Callable[..., RpcClient] = RpcClient,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._tls = tls_files
        self._make_client = make_client
        self._started = time.monotonic()
        # Every setting is checked before anything starts (a dnsmasq, a table).
        self.policy = scheduler.policy(config.scheduler)
        # None without an overlay
        self.private = _private_networks(config, tls_files, self._certified_name)
        self.registry = NodeRegistry(Path(config.state_dir) / "cc.db")
        self.groups = GroupStore(Path(config.state_dir) / "cc.db")
        self.public = PublicNetwork.from_config(config)  # None in SYSTEM mode
        self.overlay = OverlayControl(lambda node: self._node_clients(node).call)
        self._vlans_lock = threading.Lock()
        # Changes of the groups and the bringing of nodes in step, one at a time: a node
        # is never left with an older version than the store's.
        self._groups_lock = threading.Lock()
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeState] = {}
        self._clients: dict[str, NodeClients] = {}
        reports = self.registry.reports()
        for node in self.registry.all():
            self._add(node)
            if node.name in reports:  # last known, until the first poll of this CC
                state = self._nodes[node.name]
                state.last_seen, instances = reports[node.name]
                state.instances = {i: NcInstance.from_api(v) for i, v in instances.items()}
        self._reservations: dict[str, Reservation] = {}
        self._poll_pool = ThreadPoolExecutor(config.poll_workers, "cc-poll")
        self._dispatch_pool = ThreadPoolExecutor(config.dispatch_workers, "cc-dispatch")
        # terminate, reboot: never queued behind dispatches that wait on launches
        self._call_pool = ThreadPoolExecutor(config.dispatch_workers, "cc-call")
        # polls of the nodes a call touched: behind neither a poll cycle nor other calls
        self._refresh_pool = ThreadPoolExecutor(REFRESH_WORKERS, "cc-refresh")
        # security group changes for all nodes at once: a pool of their own, since a
        # change holds the groups lock that polls bringing nodes in step wait for
        self._group_pool = ThreadPoolExecutor(REFRESH_WORKERS, "cc-groups")

    def stop(self) -> None:
        """End the processes the CC supervises (its dnsmasqs); their state stays."""
        if self.public is not None:
            self.public.stop()
        if self.private is not None:
            self.private.stop()

    def _add(self, node: Node) -> None:
        """Track a registered node. Lock held (or not yet shared)."""
        poll_timeout = (self.config.poll_timeout_s, self.config.poll_timeout_s)
        self._nodes[node.name] = NodeState(node)
        self._clients[node.name] = NodeClients(
            poll=NcClient(self._make_client(node.url, self._tls, timeout=poll_timeout, retries=0)),
            run=NcClient(self._make_client(node.url, self._tls, timeout=(3.05, 60.0))),
            call=NcClient(self._make_client(node.url, self._tls, timeout=(3.05, 60.0))),
        )

    def _node_clients(self, node: str) -> NodeClients:
        with self._lock:
            clients = self._clients.get(node)
        if clients is None:
            raise NodeNotFound(f"node {node} is not registered")
        return clients

    # -- the node registry --------------------------------------------------------------

    def register_node(self, name: str, url: str) -> dict[str, Any]:
        node = self.registry.add(name, url)
        with self._lock:
            self._add(node)
            view = self._nodes[name].to_api()
        self._poll_pool.submit(self._poll_node, name)  # learn its state without waiting
        return view

    def deregister_node(self, name: str, force: bool = False) -> None:
        """Forget a node. While it holds instances only with ``force``, for a node that
        is gone for good (its instances are then forgotten too)."""
        with self._lock:
            state = self._nodes.get(name)
            if state is None:
                raise NodeNotFound(f"node {name} is not registered")
            held = sorted(r.instance_id for r in self._reservations.values() if r.node == name)
            live = sorted(
                i for i, v in state.instances.items() if v.nc_state is not NcState.TERMINATED
            )
            if (live or held) and not force:
                raise NodeInUse(
                    f"node {name} still holds instances {live + held} (force to forget them)"
                )
            for instance_id in held:
                del self._reservations[instance_id]
            self.registry.remove(name)
            del self._nodes[name]
            del self._clients[name]

    def describe_nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_api() for s in self._ordered()]

    def _ordered(self) -> list[NodeState]:
        """Node states in registration order. Lock held."""
        return sorted(self._nodes.values(), key=lambda s: s.node.position)

    # -- polling ------------------------------------------------------------------------

    def poll(self) -> float:
        """One cycle: every node at once (up to poll_workers), each call bounded by
        poll_timeout_s and never retried. Returns the cycle's duration."""
        started = time.monotonic()
        with self._lock:
            names = list(self._nodes)
        wait([self._poll_pool.submit(self._poll_node, name) for name in names])
        self._carry_vlans()
        if self.public is not None:
            # Pairs are taken under this lock too: one taken after this snapshot is not
            # in ``held``, so it is never given back for want of a report.
            with self._lock:
                live = {
                    instance_id
                    for state in self._nodes.values()
                    for instance_id, instance in state.instances.items()
                    if instance.nc_state is not NcState.TERMINATED
                }
                ended = self.public.holders() - live - set(self._reservations)
            self.public.give_back(ended)
        elapsed = time.monotonic() - started
        self.metrics.observe("cc_poll_cycle", elapsed)
        return elapsed

    def _refresh(self, nodes: set[str]) -> None:
        """Poll these nodes now, so that the caller's next describe shows what its call
        changed (an instance counted once, room freed) instead of waiting for the next
        cycle. Each poll is bounded by poll_timeout_s per call."""
        wait([self._refresh_pool.submit(self._poll_node, name) for name in nodes])

    def _poll_node(self, name: str) -> None:
        with self._lock:
            state = self._nodes.get(name)
            clients = self._clients.get(name)
        if state is None or clients is None:
            return  # deregistered meanwhile
        started = time.monotonic()
        try:
            if not state.groups_in_step:
                self._bring_groups_in_step(state, clients.poll)
            # Instances first, then resources: an instance seen in the list is then
            # also counted in the figures, so a reservation released for it is never
            # counted twice nor lost.
            instances = clients.poll.describe_instances()
            resource = clients.poll.describe_resource()
        except Exception as e:
            self._poll_failed(state, _as_error(e), started)
            return
        report = {i.instance_id: i for i in instances}
        with self._lock:
            # Apply only to the node as it was when this poll began, and never over a
            # report from a poll that began later.
            if self._nodes.get(name) is not state or started < state.poll_started:
                return
            state.poll_started = started
            state.health = Health.UP
            state.last_seen, state.last_answer = time.time(), time.monotonic()
            state.last_error = ""
            changed = report != state.instances
            state.instances = report
            state.most, state.available = resource.maximum, resource.available
            state.overlay_address = _underlay_address(name, resource.overlay_address)
            for r in [r for r in self._reservations.values() if r.node == name]:
                reported = r.instance_id in report
                vanished = r.dispatched_at is not None and started > r.dispatched_at
                if reported or vanished:
                    del self._reservations[r.instance_id]
            last_seen = state.last_seen
        if changed:
            saved = {i: v.to_api() for i, v in report.items()}
            self.registry.save_report(name, started, last_seen, saved)

    def _poll_failed(self, state: NodeState, error: MalleeError, started: float) -> None:
        """A node whose NC answers that its libvirt does not is degraded: it keeps its
        last report, shown as not reachable. One that does not answer is unreachable,
        then down."""
        self._poll_failed_state(state, error, started)
        self.overlay.forget(state.node.name)  # its networks too: it may have restarted

    def _poll_failed_state(self, state: NodeState, error: MalleeError, started: float) -> None:
        with self._lock:
            if self._nodes.get(state.node.name) is not state or started < state.poll_started:
                return
            state.poll_started = started
            state.groups_in_step = False  # it may have missed a change meanwhile
            now = time.monotonic()
            if error.code == HypervisorUnavailable.code:
                health = Health.DEGRADED
                state.last_seen, state.last_answer = time.time(), now
            else:
                # silent since its last answer, never counted from before this CC began
                since = state.last_answer or self._started
                down = now - since >= self.config.down_after_s
                health = Health.DOWN if down else Health.UNREACHABLE
            if state.health is not health:
                logger.warning("node %s is %s: %s", state.node.name, health, error.message)
            state.health = health
            state.last_error = error.message

    # -- security groups ----------------------------------------------------------------

    def security_groups(self) -> list[SecurityGroup]:
        return self.groups.all()

    def put_security_group(self, group: SecurityGroup) -> None:
        """Keep the group and put it on every node that answers, all at once; the others
        get it when they answer again."""
        with self._groups_lock:
            self.groups.put(group)
            self._on_every_node(lambda client: client.put_security_group(group))

    def delete_security_group(self, group_id: str) -> None:
        with self._groups_lock:
            if not self.groups.delete(group_id):
                raise SecurityGroupNotFound(f"security group {group_id} is not in this cluster")
            self._on_every_node(lambda client: _forget_group(client, group_id))

    def _on_every_node(self, change: Callable[[NcClient], None]) -> None:
        """Make ``change`` on every node not down, all at once: on a node in step the
        change alone, on one out of step (after a CC restart, say) every group. One that
        fails is out of step until its next answered poll. Groups lock held."""
        with self._lock:
            targets = [
                (state, self._clients[name].poll)
                for name, state in self._nodes.items()
                if state.health is not Health.DOWN
            ]

        def apply(state: NodeState, client: NcClient) -> None:
            try:
                if state.groups_in_step:
                    change(client)
                else:
                    self._catch_up(state, client)
            except Exception as e:
                logger.warning("node %s missed a security group change: %s", state.node.name, e)
                with self._lock:
                    state.groups_in_step = False

        copy = contextvars.copy_context
        wait([self._group_pool.submit(copy().run, apply, s, c) for s, c in targets])

    def _bring_groups_in_step(self, state: NodeState, client: NcClient) -> None:
        with self._groups_lock:
            self._catch_up(state, client)

    def _catch_up(self, state: NodeState, client: NcClient) -> None:
        """Every group of the store onto the node, and none else. A group the node
        refuses is logged and left out (instances in it cannot run there); a node that
        does not answer raises. Groups lock held."""
        wanted = self.groups.all()
        for group in wanted:
            try:
                client.put_security_group(group)
            except RemoteError as e:
                logger.error(
                    "node %s refused security group %s: %s",
                    state.node.name,
                    group.group_id,
                    e.message,
                )
        kept = {g.group_id for g in wanted}
        for held in client.describe_security_groups():
            if held.group_id not in kept:
                _forget_group(client, held.group_id)
        with self._lock:
            state.groups_in_step = True

    # -- capacity -----------------------------------------------------------------------

    def _candidates(self, exclude: Sequence[str] = ()) -> list[scheduler.Candidate]:
        """Up nodes in registration order, with what is free net of the reservations
        they have not reported yet (a poll that reports one releases it). Lock held."""
        held: dict[str, list[VmType]] = {}
        for r in self._reservations.values():
            held.setdefault(r.node, []).append(r.vm_type)
        candidates = []
        for state in self._ordered():
            if state.health is not Health.UP or state.node.name in exclude:
                continue
            if not state.groups_in_step:  # it could refuse, or misapply, an instance's groups
                continue
            assert state.most is not None and state.available is not None
            free = state.available
            for vm in held.get(state.node.name, []):
                free = free.minus(vm)
            candidates.append(
                scheduler.Candidate(state.node.name, state.node.position, state.most, free)
            )
        return candidates

    def _not_up(self) -> str:
        """The nodes that cannot take instances now, and why. Lock held."""
        return ", ".join(
            f"{s.node.name} ({s.health.value}{': ' + s.last_error if s.last_error else ''})"
            if s.health is not Health.UP
            else f"{s.node.name} (its security groups are being brought in step)"
            for s in self._ordered()
            if s.health is not Health.UP or not s.groups_in_step
        )

    def describe_resources(self, vm_types: list[VmType]) -> list[dict[str, Any]]:
        """For each type: how many fit at once now (``available``), and on empty nodes
        (``max``), counting the nodes that are up."""
        started = time.perf_counter()
        with self._lock:
            candidates = self._candidates()
        answer = [
            {
                "name": vm.name,
                "cores": vm.cores,
                "memory_mb": vm.memory_mb,
                "disk_gb": vm.disk_gb,
                "available": sum(c.free.how_many(vm) for c in candidates),
                "max": sum(c.most.how_many(vm) for c in candidates),
            }
            for vm in vm_types
        ]
        self.metrics.observe("cc_describe_resources", time.perf_counter() - started)
        return answer

    # -- runInstances -------------------------------------------------------------------

    def run_instances(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Place the whole batch (or refuse it whole), then dispatch each instance to its
        node; an instance whose node fails moves to the next candidate. Should one
        instance find no node at all, the others are terminated: never a partial batch."""
        vm = VmType(**request["vm_type"])
        ids = [i["instance_id"] for i in request["instances"]]
        if len(set(ids)) != len(ids):
            raise InstanceAlreadyExists(f"instance ids repeat within the request: {ids}")
        started = time.perf_counter()
        with self._lock:
            # reported by a node, or reserved by a request still under way
            known = {i for s in self._nodes.values() for i in s.instances}
            if clash := sorted(set(ids) & (known | set(self._reservations))):
                raise InstanceAlreadyExists(f"instances {clash} already exist in this cluster")
            candidates = self._candidates()
            nodes = scheduler.place(self.policy, [vm] * len(ids), candidates)
            if nodes is None:
                room = sum(c.free.how_many(vm) for c in candidates)
                message = (
                    f"{len(ids)} instances of {vm.name} ({vm.cores} cores, {vm.memory_mb} MiB, "
                    f"{vm.disk_gb} GiB) do not fit: the cluster has room for {room} now"
                )
                if not_up := self._not_up():
                    raise NodesUnavailable(f"{message}; nodes not available: {not_up}")
                raise InsufficientResources(message)
            nets = {i["instance_id"]: i.get("net") or {} for i in request["instances"]}
            for instance_id, node in zip(ids, nodes, strict=True):
                self._reservations[instance_id] = Reservation(
                    instance_id, node, vm, nets[instance_id]
                )
            try:
                items = self._with_public_addresses(request["instances"])
            except MalleeError:
                for instance_id in ids:
                    del self._reservations[instance_id]
                raise
        self.metrics.observe("cc_schedule", time.perf_counter() - started)

        common = {k: v for k, v in request.items() if k != "instances"}
        futures = [  # each in a copy of this context: the NCs log the caller's request id
            self._dispatch_pool.submit(
                contextvars.copy_context().run, self._dispatch, {**common, **item}, vm, node
            )
            for item, node in zip(items, nodes, strict=True)
        ]
        outcomes: list[dict[str, Any] | MalleeError] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as e:
                outcomes.append(_as_error(e))
        placed = [o for o in outcomes if not isinstance(o, MalleeError)]
        failures = [o for o in outcomes if isinstance(o, MalleeError)]
        if failures:
            self._roll_back(placed)
            raise failures[0]
        self._refresh({view["node"] for view in placed})
        self.metrics.observe("cc_run_instances", time.perf_counter() - started)
        return placed

    def _with_public_addresses(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The instances as their nodes are to run them: in MANAGED and STATIC modes each
        public NIC with the pair the cluster gives it (a poll that no longer finds the
        instance gives it back). Lock held, with the instances reserved."""
        if self.public is None:
            return items
        wanted = [
            (i["instance_id"], i["net"]["public_mac"])
            for i in items
            if i.get("net", {}).get("public_mac")
        ]
        given = self.public.take(wanted)
        return [
            {**i, "net": {**i["net"], "public_mac": pair.mac, "public_ip": pair.address}}
            if (pair := given.get(i["instance_id"]))
            else i
            for i in items
        ]

    def _dispatch(self, body: dict[str, Any], vm: VmType, node: str) -> dict[str, Any]:
        """Run one instance, moving it on to other nodes while a node fails it. The
        reservation is released on failure, unless the instance may exist after all."""
        instance_id = body["instance_id"]
        tried: list[str] = []
        keep_reservation = False
        try:
            while True:
                tried.append(node)
                try:
                    if (nic := _private_nic(body.get("net") or {})) is not None:
                        self._carry_vlans(must=(node, nic[0]))
                    instance = self._launch_on(node, body)
                except _LaunchLost as lost:
                    # Keep the reservation; the next poll of the node settles it
                    # (listed: a real instance; not listed: released).
                    keep_reservation = True
                    self._mark(node, instance_id, lost.error)
                    with self._lock:
                        if instance_id in self._reservations:
                            self._reservations[instance_id].dispatched_at = time.monotonic()
                    error = lost.error
                    raise RemoteError(
                        error.status,
                        error.code,
                        f"{error.message}; node {node} may still hold {instance_id}, so it "
                        "was run on no other node: describeInstances shows what became of "
                        "it once the node answers, and a terminate ends it",
                    ) from None
                except MalleeError as e:
                    if not self._node_at_fault(e):
                        raise  # the request's fault: it would fail on every node
                    self._mark(node, instance_id, e)
                    node = self._next_node(body, vm, tried, e)
                    continue
                self._dispatched(instance_id, instance)
                keep_reservation = True
                return instance_view(instance, node, True, self._public_ip(instance_id))
        finally:
            if not keep_reservation:
                with self._lock:
                    self._reservations.pop(instance_id, None)

    def _launch_on(self, node: str, body: dict[str, Any]) -> NcInstance:
        """runInstance on ``node``, then wait (up to run_timeout_s) for the launch's
        outcome: the instance running, its failure raised as the NC's error, or
        _LaunchLost when the CC cannot tell whether the node holds it."""
        instance_id = body["instance_id"]
        clients = self._node_clients(node)
        try:
            pending = clients.run.run_instance(body)
        except Unreachable as e:
            if e.maybe_delivered and not self._absent(node, instance_id):
                raise _LaunchLost(e) from e
            raise
        self._dispatched(instance_id, pending)  # listed, and terminable, while pending
        deadline = time.monotonic() + self.config.run_timeout_s
        while True:
            try:
                [instance] = clients.call.describe_instances([instance_id])
            except MalleeError as e:  # the node stopped answering, or its libvirt did
                if not self._absent(node, instance_id):
                    raise _LaunchLost(e) from e
                raise
            if instance.nc_state is NcState.RUNNING:
                return instance
            if instance.nc_state is NcState.TERMINATED:
                if instance.failure is None:
                    return instance  # terminated by a caller while it launched
                failure = instance.failure
                raise RemoteError(failure.status, failure.code, failure.message)
            if time.monotonic() > deadline:
                slow = LaunchFailed(
                    f"node {node} did not launch {instance_id} within "
                    f"{self.config.run_timeout_s:.0f} s (run_timeout_s)"
                )
                if not self._absent(node, instance_id):
                    raise _LaunchLost(slow)
                raise slow
            time.sleep(LAUNCH_POLL_S)

    def _dispatched(self, instance_id: str, instance: NcInstance) -> None:
        """The NC's latest word on an instance it holds, until a poll reports it."""
        with self._lock:
            reservation = self._reservations.get(instance_id)
            if reservation is not None:
                reservation.view = instance
                reservation.dispatched_at = time.monotonic()

    @staticmethod
    def _node_at_fault(error: MalleeError) -> bool:
        """Whether another node might succeed: this one was unreachable, broke, or was
        fuller than the CC thought. A bad image or request fails everywhere."""
        if isinstance(error, Unreachable):
            return True
        return error.status >= 500 or error.code == InsufficientResources.code

    def _absent(self, node: str, instance_id: str) -> bool:
        """Make sure the node does not hold the instance (terminating it there)."""
        try:
            instance = self._node_clients(node).call.terminate_instance(instance_id)
        except MalleeError as e:
            return e.code == InstanceNotFound.code
        return instance.nc_state is NcState.TERMINATED

    def _mark(self, node: str, instance_id: str, error: MalleeError) -> None:
        """A node that failed a run: out of scheduling until its next good poll (unless
        it merely was full, which the next poll shows anyway)."""
        logger.warning("%s failed on node %s: %s", instance_id, node, error.message)
        with self._lock:
            state = self._nodes.get(node)
            if state is None:
                return
            state.last_error = f"runInstance {instance_id}: {error.message}"
            if error.code == InsufficientResources.code or state.health is not Health.UP:
                return
            if error.code == HypervisorUnavailable.code:
                state.health = Health.DEGRADED
            else:
                state.health = Health.UNREACHABLE

    def _next_node(
        self, body: dict[str, Any], vm: VmType, tried: list[str], error: MalleeError
    ) -> str:
        """Reserve on the next candidate the policy picks. (The old reservation may be
        gone already: a poll that listed the instance while the failed node staged it
        released it.) None left: the error says why the last one failed."""
        instance_id = body["instance_id"]
        with self._lock:
            candidate = self.policy.choose(vm, self._candidates(exclude=tried))
            if candidate is None:
                message = (
                    f"instance {instance_id} failed on {tried} "
                    f"(last: {error.code}: {error.message}); no other node has room"
                )
                if error.code == InsufficientResources.code:
                    raise InsufficientResources(message)
                raise NodesUnavailable(message)
            self._reservations[instance_id] = Reservation(
                instance_id, candidate.name, vm, body.get("net") or {}
            )
            return candidate.name

    def _roll_back(self, placed: list[dict[str, Any]]) -> None:
        """Terminate what a failed batch started. One that will not go keeps its
        reservation, so the next poll lists it: it is never lost from sight."""
        for view in placed:
            try:
                self._node_clients(view["node"]).call.terminate_instance(view["instance_id"])
            except MalleeError:
                logger.exception("rolling back %s", view["instance_id"])
                continue
            with self._lock:
                self._reservations.pop(view["instance_id"], None)

    # -- the private overlay ------------------------------------------------------------

    def _certified_name(self, address: str) -> str:
        """The name the certificate of the node at underlay ``address`` shows: its API
        URL's host, which polling already checks it against."""
        with self._lock:
            for state in self._nodes.values():
                if state.overlay_address == address:
                    return urlsplit(state.node.url).hostname or address
        return address

    def _carry_vlans(self, must: tuple[str, int] | None = None) -> None:
        """Tell the nodes which VLANs they carry and their peers (vlans.py), and carry
        them here as their router and DHCP server (privatenet.py); with ``must``, that
        node's failure to start that VLAN is raised (it is about to run an instance on
        it). One at a time: none applies an older picture after a newer one."""
        with self._vlans_lock:
            with self._lock:
                nics = [
                    (r.node, nic)
                    for r in self._reservations.values()
                    if (nic := _private_nic(r.net)) is not None
                ]
                for state in self._nodes.values():
                    nics += [
                        (state.node.name, nic)
                        for i in state.instances.values()
                        if i.nc_state is not NcState.TERMINATED
                        and (nic := _private_nic(i.net)) is not None
                    ]
                addresses = {name: s.overlay_address for name, s in self._nodes.items()}
                up = {name for name, s in self._nodes.items() if s.health is Health.UP}
            placements = {(node, vlan) for node, (vlan, _) in nics}
            if self.private is not None:  # this CC carries every VLAN its nodes carry
                placements |= {(vlans.THIS_CC, vlan) for _, vlan in placements}
                addresses[vlans.THIS_CC] = self.config.overlay_address
            wanted = vlans.plan(placements, addresses)
            mine = wanted.pop(vlans.THIS_CC, {})
            failed = self.overlay.apply(wanted, up)
            if self.private is not None:
                pairs: dict[int, set[AddressPair]] = defaultdict(set)
                for _, (vlan, pair) in nics:
                    pairs[vlan].add(pair)
                try:
                    self.private.apply({v: (peers, pairs[v]) for v, peers in mine.items()})
                except Exception:  # the next poll tries again; dispatches go on
                    logger.exception("private networks not carried here")
        if must is not None and must[0] in failed:
            raise failed[must[0]]

    # -- elastic addresses --------------------------------------------------------------

    def _public_network(self) -> PublicNetwork:
        if self.public is None:
            raise NoPublicNetwork(
                "this cluster's public_mode is system: its instances' public addresses come"
                " from the site's DHCP and router, so the CC cannot translate elastic"
                " addresses; they need public_mode managed or static"
            )
        return self.public

    def elastic_addresses(self) -> dict[str, str]:
        return self.public.elastic() if self.public is not None else {}  # SYSTEM: none

    def associate_address(self, public_ip: str, instance_id: str) -> None:
        self._public_network().associate(public_ip, instance_id)

    def disassociate_address(self, public_ip: str) -> None:
        if self.public is None:
            raise ElasticAddressNotFound(f"elastic address {public_ip} is not associated here")
        self.public.disassociate(public_ip)

    # -- the pass-through operations ----------------------------------------------------

    def _public_ip(self, instance_id: str) -> str:
        return self.public.address_of(instance_id) if self.public is not None else ""

    def _views(self) -> dict[str, dict[str, Any]]:
        """Every instance the cluster knows: as its node last reported it, or as its NC
        answered while no poll has reported it yet. Lock held."""
        views: dict[str, dict[str, Any]] = {}
        for state in self._ordered():
            reachable = state.health is Health.UP
            for instance_id, instance in state.instances.items():
                if instance_id in views and instance.nc_state is NcState.TERMINATED:
                    continue  # terminated here after it moved: the live one is the one
                views[instance_id] = instance_view(
                    instance, state.node.name, reachable, self._public_ip(instance_id)
                )
        for r in self._reservations.values():
            if r.view is not None and r.instance_id not in views:
                node = self._nodes.get(r.node)
                up = node is not None and node.health is Health.UP
                public_ip = self._public_ip(r.instance_id)
                views[r.instance_id] = instance_view(r.view, r.node, up, public_ip)
        return views

    def _find(self, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The views of these instances; all of them, or InstanceNotFound naming the rest."""
        with self._lock:
            views = self._views()
        if missing := sorted(set(instance_ids) - set(views)):
            raise InstanceNotFound(f"instances {missing} are not in this cluster")
        return {i: views[i] for i in instance_ids}

    def describe_instances(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        if not instance_ids:
            with self._lock:
                return list(self._views().values())
        return list(self._find(instance_ids).values())

    def _fan_out(
        self, instance_ids: list[str], operation: Callable[[NcClient, str], NcInstance]
    ) -> list[dict[str, Any]]:
        """Call each instance's NC at once; one result per instance, errors included."""
        nodes = {i: v["node"] for i, v in self._find(instance_ids).items()}

        def one(instance_id: str) -> dict[str, Any]:
            node = nodes[instance_id]
            try:
                instance = operation(self._node_clients(node).call, instance_id)
            except MalleeError as e:
                return {
                    "instance_id": instance_id,
                    "node": node,
                    "error": {"code": e.code, "message": e.message},
                }
            view = instance_view(instance, node, True, self._public_ip(instance_id))
            return {"instance_id": instance_id, "node": node, "instance": view}

        futures = [
            self._call_pool.submit(contextvars.copy_context().run, one, instance_id)
            for instance_id in instance_ids
        ]
        return [future.result() for future in futures]

    def terminate_instances(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        results = self._fan_out(instance_ids, NcClient.terminate_instance)
        self._refresh({r["node"] for r in results if "instance" in r})
        return results

    def reboot_instances(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        return self._fan_out(instance_ids, NcClient.reboot_instance)

    def console_output(self, instance_id: str) -> dict[str, Any]:
        node = self._find([instance_id])[instance_id]["node"]
        output = self._node_clients(node).call.get_console_output(instance_id)
        return {"instance_id": instance_id, "output": output}


def _forget_group(client: NcClient, group_id: str) -> None:
    """Take a group off a node; one it does not hold is gone already, and one its live
    instances still use stays until they end (the node refuses, and says so)."""
    try:
        client.delete_security_group(group_id)
    except RemoteError as e:
        if e.status == 404:
            return
        if e.status == 409:
            logger.warning("a node keeps security group %s: %s", group_id, e.message)
            return
        raise


def metadata_route(config: CcConfig) -> tuple[str, int] | None:
    """Where the VLANs' redirect of 169.254.169.254:80 goes: the CLC's metadata service
    itself when it runs on this host (the source address kept tells the instance), else
    this CC's metadata proxy, which vouches for the instance (metadataproxy.py)."""
    if not config.metadata_address:
        return None
    if not metadataproxy.needed(config):
        return metadata_target(config.metadata_address)
    if not config.metadata_proxy_secret:
        raise ConfigError(
            f"[cc] metadata_address: {config.metadata_address} is on another host, which the"
            " VLANs' instances reach through this CC's metadata proxy: set"
            " metadata_proxy_secret, the same as the CLC's"
        )
    return config.overlay_address, config.metadata_proxy_port


def _underlay_address(node: str, said: str) -> str:
    """A node's overlay address as it said it, if it is an IPv4 address ("" if not:
    it goes into flood entries and wire commands)."""
    try:
        return str(ipaddress.IPv4Address(said)) if said else ""
    except ValueError:
        logger.warning("node %s reports overlay address %r, not an IPv4 address", node, said)
        return ""


def _private_nic(net: dict[str, Any]) -> tuple[int, AddressPair] | None:
    """The VLAN and the (address, MAC) of an instance's private NIC, if it has one."""
    if not (net.get("private_mac") and net.get("vlan")):
        return None
    return net["vlan"], AddressPair(net.get("private_ip") or "", net["private_mac"].lower())


def _private_networks(
    config: CcConfig, tls_files: ClientTLS | None, certified_name: Callable[[str], str]
) -> PrivateNetworks | None:
    """The CC's side of the private overlay, as ``[cc]`` asks; None without one."""
    if problem := overlay_problem("cc", config.overlay, config.overlay_address):
        raise ConfigError(problem)
    if not config.overlay:
        if config.overlay_peers:
            raise ConfigError('[cc] overlay_peers needs an overlay: "vxlan" or "vde"')
        return None
    if not config.private_subnet:
        raise ConfigError(
            "[cc] overlay needs private_subnet, the CLC's: the CC routes each VLAN's slice of it"
        )
    try:
        slices.check("cc", config.private_subnet, config.private_slice_prefix)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if clash := privatenet.host_overlap(config.private_subnet):
        raise ConfigError(
            f"[cc] private_subnet: {config.private_subnet} overlaps {clash}; the CC routes"
            " each VLAN's slice of it on this host, so choose one this host's networks do"
            " not use (in [clc] too)"
        )
    if problem := peering_problem(config.overlay_peer_address, config.overlay_peers):
        raise ConfigError(problem)
    peering = None
    if config.overlay_peers:
        peering = ClusterPeering(
            config.overlay_peer_address,
            config.overlay_peers,
            config.private_subnet,
            config.private_slice_prefix,
        )
    state = Path(config.state_dir) / "vlans"
    overlay: Overlay = VxlanOverlay(config.overlay_address, prefix=privatenet.VXLAN_PREFIX)
    if config.overlay == "vde":
        if tls_files is None:
            raise ConfigError(
                '[cc] overlay = "vde" needs [common] tls = true: a wire is a trunk into a'
                " node's VLANs, and must not be open to anyone who reaches it"
            )
        overlay = VdeOverlay(
            Path(config.state_dir) / "vde",
            config.overlay_address,
            tls_files,
            dials=True,
            prefix=privatenet.VDE_PREFIX,
            peer_name=certified_name,
        )
    return PrivateNetworks(
        state,
        overlay,
        config.private_subnet,
        config.private_slice_prefix,
        peering,
        metadata_route(config),
    )
