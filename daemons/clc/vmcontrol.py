"""VmControl (seed §2.1, "Instance Control"): hands instances to their clusters, and
keeps the CLC's records in step with what each cluster reports.

RunInstances records its instances ``pending`` and answers at once; after its
transaction commits, VmControl sends each zone's share to that zone's CC. A record
moves only by what a CC says: ``running`` once its CC reports it running,
``terminated`` once its CC reports it ended or no longer lists it. Each CC is polled
every ``poll_interval_s``, and its report is ground truth:

- an instance a CC took and then stops listing for ``lost_after_polls`` polls is ended
  as lost (``Server.InternalError``);
- an instance a CC runs that the records do not hold, or hold as ended, is terminated:
  the CLC is the authority on what users asked for, and the NC proves such a guest is
  mallee's (its domain carries mallee's metadata);
- an instance a CC reports ended that its user did not end keeps the CC's reason;
- instances ``shutting-down`` are asked of their CC again on every poll until it
  reports them ended, so a terminate survives a CLC restart.

Each of these disagreements is counted in ``mallee_clc_disagreements_total{kind}``.
Every change of state is a conditional UPDATE (``... WHERE state = <expected>``), so a
poll never overwrites what a concurrent request has just written.

A CC unreachable is not evidence of anything: its instances keep their last state
until it answers again. Instances never confirmed sent (``queued``, ``sent``) are sent
again by the next poll that does not list them, after a restart too; the CC refuses an
id it already has, so none runs twice.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mallee.cc.client import CcClient, ClusterInstance, TypeRoom
from mallee.clc import images, instances
from mallee.clc.config import ClcConfig
from mallee.clc.db import Cluster, ElasticAddress, Image, Instance, PrivateAddress, Sessions
from mallee.clc.wire import Ec2Error
from mallee.clc.zonesync import ELASTIC_ADDRESSES, SECURITY_GROUPS, ZoneSync
from mallee.common.capacity import VmType
from mallee.common.errors import MalleeError
from mallee.common.metrics import Metrics
from mallee.common.rpc import Unreachable

logger = logging.getLogger(__name__)


class Reconciled(NamedTuple):
    """What reconciling a record reads of it: a plain tuple (a zone may hold thousands,
    polled every few seconds; a tuple's fields are read at C speed, a row's are not)."""

    instance_id: str
    reservation_id: str
    zone: str
    state: str
    node: str
    missing_polls: int
    dispatch: str
    leased_ip: str
    lease_ends_at: datetime | None


RECONCILED = [getattr(Instance, name) for name in Reconciled._fields]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Zone:
    """A zone as its last poll found it: its room per type and when that was asked, and
    the instances it reported running on nodes that answer."""

    answering: bool
    rooms: dict[str, TypeRoom]
    asked_at: datetime
    reachable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelView:
    """VmControl's model as one request's SLA policies read it (``sla.Model``)."""

    vmcontrol: VmControl
    db: Session

    def zones(self) -> list[str]:
        return self.vmcontrol.zones(self.db)

    def room(self, zone: str, vm_type: VmType) -> int:
        return self.vmcontrol.room(self.db, zone, vm_type)

    def live_instances(self, owner: str) -> int:
        count = (
            select(func.count())
            .select_from(Instance)
            .where(Instance.owner == owner, Instance.state.in_(instances.LIVE))
        )
        return int(self.db.scalar(count) or 0)


class VmControl:
    def __init__(
        self,
        sessions: Sessions,
        config: ClcConfig,
        catalog: list[VmType],
        cc_client: Callable[[str], CcClient],
        image_url: str,
        metrics: Metrics,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.catalog = catalog
        self._types = {t.name: t for t in catalog}
        self.cc_client = cc_client
        self.image_url = image_url
        self.metrics = metrics
        self._lock = threading.Lock()
        self._zones: dict[str, _Zone] = {}
        self._in_flight: set[str] = set()  # reservations this process is sending
        self._dispatcher = ThreadPoolExecutor(16, "clc-dispatch")
        self.groups = ZoneSync(sessions, cc_client, SECURITY_GROUPS)
        self.addresses = ZoneSync(sessions, cc_client, ELASTIC_ADDRESSES)
        self._calls = ThreadPoolExecutor(16, "clc-calls")

    # -- the model the SLA policies read ------------------------------------------------

    def model(self, db: Session) -> ModelView:
        return ModelView(self, db)

    def zones(self, db: Session) -> list[str]:
        """The zones whose CC answered its last poll. A cluster registered since the
        last poll is asked now: a new zone is usable at once."""
        with self._lock:
            known = set(self._zones)
        for cluster in db.scalars(select(Cluster).where(Cluster.name.not_in(known))):
            self._ask(cluster.name, cluster.url)
        with self._lock:
            return sorted(name for name, z in self._zones.items() if z.answering)

    def room(self, db: Session, zone: str, vm: VmType) -> int:
        """How many more of ``vm`` fit in ``zone``: its CC's last count, less the
        instances recorded since (or not yet taken by the CC), each counted as the
        number of ``vm`` slots its own type takes."""
        with self._lock:
            known = self._zones.get(zone)
        if known is None or vm.name not in known.rooms:
            return 0
        unseen = db.execute(
            select(Instance.instance_type).where(
                Instance.zone == zone,
                Instance.state == "pending",
                (Instance.launch_time >= known.asked_at) | (Instance.dispatch != "accepted"),
            )
        ).scalars()
        taken = sum(_slots(self._types[t], vm) for t in unseen if t in self._types)
        return max(0, known.rooms[vm.name].available - taken)

    # -- sending instances to their CCs -------------------------------------------------

    def dispatch(self, reservation_id: str) -> None:
        """Send the reservation's pending instances not yet taken, in the background."""
        with self._lock:
            if reservation_id in self._in_flight:
                return
            self._in_flight.add(reservation_id)
        self._dispatcher.submit(contextvars.copy_context().run, self._dispatch, reservation_id)

    def _dispatch(self, reservation_id: str) -> None:
        try:
            self.groups.sync()  # the instances' groups, with them as members, go first
            for zone_url, request in self._requests(reservation_id):
                self._send(zone_url, request)
        except Exception:
            logger.exception("dispatching %s failed", reservation_id)
        finally:
            with self._lock:
                self._in_flight.discard(reservation_id)

    def _requests(self, reservation_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The CC requests of the reservation's instances yet to send, one per zone,
        once they are marked ``sent``."""
        requests: dict[str, dict[str, Any]] = {}
        with self.sessions.write.begin() as db:
            waiting = db.scalars(
                select(Instance)
                .where(
                    Instance.reservation_id == reservation_id,
                    Instance.state == "pending",
                    Instance.dispatch != "accepted",
                )
                .order_by(Instance.launch_index)
            ).all()
            for instance in waiting:
                cluster = db.get(Cluster, instance.zone)
                vm = self._types.get(instance.instance_type)
                refs = self._image_refs(db, instance)
                if cluster is None or vm is None or refs is None:
                    why = (
                        "its zone" if cluster is None else "its type" if vm is None else "an image"
                    )
                    self._end(
                        db,
                        instance.instance_id,
                        ("pending",),
                        f"Server.InternalError: {why} is no longer registered",
                    )
                    continue
                instance.dispatch = "sent"
                request = requests.setdefault(
                    cluster.url,
                    {
                        "reservation_id": reservation_id,
                        "owner_id": instance.owner,
                        "vm_type": asdict(vm),
                        **refs,
                        "instances": [],
                    },
                )
                request["instances"].append(
                    {"instance_id": instance.instance_id, "net": _nics(instance)}
                )
        return list(requests.items())

    def _image_refs(self, db: Session, instance: Instance) -> dict[str, Any] | None:
        refs = {}
        for field, image_id in (
            ("image", instance.image_id),
            ("kernel", instance.kernel_id),
            ("ramdisk", instance.ramdisk_id),
        ):
            if image_id is None:
                continue
            image = db.get(Image, image_id)
            if image is None:
                return None
            refs[field] = images.ref(image, self.image_url)
        return refs

    def _send(self, url: str, request: dict[str, Any]) -> None:
        ids = [i["instance_id"] for i in request["instances"]]
        if not self.groups.in_step(url):  # it may lack their groups: the next poll resends
            logger.warning("%s: not sent, %s does not hold their security groups yet", ids, url)
            return
        try:
            placed = self.cc_client(url).run_instances(request)
        except Unreachable as e:
            # Maybe taken, maybe not: the next poll that does not list them sends again.
            logger.warning("%s: %s; will send again", ids, e)
            return
        except MalleeError as e:
            if e.code == "InvalidInstanceID.Duplicate":  # taken before (a resend)
                self._accepted(ids, [])
                return
            logger.warning("the CC refused %s: %s: %s", ids, e.code, e.message)
            reason = f"Server.{e.code}: {e.message}"
            with self.sessions.write.begin() as db:
                for instance_id in ids:
                    self._end(db, instance_id, ("pending", "shutting-down"), reason[:512])
            return
        self._accepted(ids, placed)

    def _accepted(self, ids: list[str], placed: list[ClusterInstance]) -> None:
        reported = {p.instance_id: p for p in placed}
        with self.sessions.write.begin() as db:
            for record in db.scalars(select(Instance).where(Instance.instance_id.in_(ids))):
                if (seen := reported.get(record.instance_id)) is not None:
                    self._apply(db, record, seen)
                elif record.dispatch != "accepted":
                    db.execute(
                        update(Instance)
                        .where(Instance.instance_id == record.instance_id)
                        .values(dispatch="accepted", missing_polls=0)
                    )

    # -- ending instances ---------------------------------------------------------------

    def terminate(self, instance_ids: list[str]) -> None:
        """Ask the instances' CCs to end them (recorded ``shutting-down`` already), in
        the background; the polls see them ended, and ask again until then."""
        if instance_ids:
            self._calls.submit(contextvars.copy_context().run, self._terminate, instance_ids)

    def _terminate(self, instance_ids: list[str]) -> None:
        with self.sessions.read.begin() as db:
            rows = db.execute(
                select(Instance.instance_id, Cluster.url, Cluster.name)
                .join(Cluster, Cluster.name == Instance.zone)
                .where(Instance.instance_id.in_(instance_ids))
            ).all()
        by_zone: dict[tuple[str, str], list[str]] = {}
        for instance_id, url, zone in rows:
            by_zone.setdefault((url, zone), []).append(instance_id)
        for (url, zone), ids in by_zone.items():
            self._end_in(zone, url, ids)
            self.poll_zone(zone, url)

    def _end_in(self, zone: str, url: str, instance_ids: list[str]) -> None:
        """Ask the zone's CC to end these; a failure is the next poll's to retry."""
        try:
            self.cc_client(url).terminate_instances(instance_ids)
        except MalleeError as e:
            logger.warning("terminating %s in %s: %s: %s", instance_ids, zone, e.code, e.message)

    # -- calls passed through to an instance's CC ---------------------------------------

    def reachable(self, instance_ids: set[str]) -> set[str]:
        """Those of the instances the last polls found running on nodes that answer."""
        with self._lock:
            return {i for z in self._zones.values() for i in z.reachable & instance_ids}

    def _cc_of(self, db: Session, zone: str) -> CcClient:
        cluster = db.get(Cluster, zone)
        if cluster is None:
            raise Ec2Error("InternalError", f"zone {zone} is no longer registered", 500)
        return self.cc_client(cluster.url)

    def reboot(self, db: Session, records: list[Instance]) -> None:
        by_zone: dict[str, list[str]] = {}
        for r in records:
            by_zone.setdefault(r.zone, []).append(r.instance_id)
        for zone, ids in by_zone.items():
            try:
                self._cc_of(db, zone).reboot_instances(ids)
            except MalleeError as e:
                raise _unavailable(zone, e) from None

    def console_output(self, db: Session, record: Instance) -> str:
        """What the instance wrote to its console; nothing before its CC took it."""
        if record.dispatch != "accepted":
            return ""
        try:
            return self._cc_of(db, record.zone).console_output(record.instance_id)
        except MalleeError as e:
            if e.code == "InvalidInstanceID.NotFound":  # ended and forgotten by its node
                return ""
            raise _unavailable(record.zone, e) from None

    # -- polling ------------------------------------------------------------------------

    def poll(self) -> None:
        """Ask every CC at once; reconcile the records of each zone with its report."""
        started = time.perf_counter()
        with self.sessions.read.begin() as db:
            clusters = [(c.name, c.url) for c in db.scalars(select(Cluster))]
        with self._lock:
            for gone in set(self._zones) - {name for name, _ in clusters}:
                del self._zones[gone]
        futures = [
            self._calls.submit(contextvars.copy_context().run, self.poll_zone, name, url)
            for name, url in clusters
        ]
        for future in futures:
            future.result()
        self.groups.sync()  # members that ended, a CC that was away
        self.addresses.sync()  # addresses of instances that ended, or got one here
        self.metrics.observe("clc_poll", time.perf_counter() - started)

    def poll_zone(self, zone: str, url: str) -> None:
        reported = self._ask(zone, url)
        if reported is None:
            return
        to_end, to_send = self._reconcile(zone, {r.instance_id: r for r in reported})
        if to_end:
            self._end_in(zone, url, sorted(to_end))
        for reservation_id in sorted(to_send):
            self.dispatch(reservation_id)

    def _ask(self, zone: str, url: str) -> list[ClusterInstance] | None:
        """The zone's CC's instances, its room kept for the model; None when it does not
        answer. Writes no record: a request's transaction may be waiting on this."""
        client = self.cc_client(url)
        asked_at = now()
        try:
            reported = client.describe_instances()
            rooms = client.describe_resources(self.catalog)
        except MalleeError as e:
            logger.info("zone %s does not answer: %s: %s", zone, e.code, e.message)
            self.groups.forget(url)
            self.addresses.forget(url)
            with self._lock:
                last = self._zones.get(zone)
                self._zones[zone] = _Zone(False, last.rooms if last else {}, asked_at)
            return None
        reachable = frozenset(
            r.instance_id for r in reported if r.reachable and r.state == "running"
        )
        with self._lock:
            self._zones[zone] = _Zone(True, {r.vm_type.name: r for r in rooms}, asked_at, reachable)
        return reported

    def _reconcile(
        self, zone: str, reported: dict[str, ClusterInstance]
    ) -> tuple[set[str], set[str]]:
        """Move the zone's records to what its CC reported. Returns the instances to
        terminate and the reservations to send again."""
        to_end: set[str] = set()
        to_send: set[str] = set()
        with self._lock:
            in_flight = set(self._in_flight)
        with self.sessions.write.begin() as db:
            records = {
                r.instance_id: r
                for r in map(
                    Reconciled._make,
                    db.execute(
                        select(*RECONCILED).where(
                            Instance.zone == zone, Instance.state.in_(instances.LIVE)
                        )
                    ),
                )
            }
            for instance_id, record in records.items():
                seen = reported.get(instance_id)
                if seen is not None:
                    self._apply(db, record, seen)
                    if record.state == "shutting-down" and seen.state != "terminated":
                        to_end.add(instance_id)
                    elif self._lease_over(record):
                        self._move(
                            db,
                            instance_id,
                            ("pending", "running"),
                            "shutting-down",
                            "Server.LeaseExpired: the instance's lease ended",
                        )
                        to_end.add(instance_id)
                elif record.dispatch != "accepted":
                    if record.state == "shutting-down":  # never taken: nothing to end
                        self._end(db, instance_id, ("shutting-down",))
                    elif record.reservation_id not in in_flight:
                        to_send.add(record.reservation_id)
                elif record.state == "shutting-down":
                    self._end(db, instance_id, ("shutting-down",))
                else:
                    self._missing(db, record)
            unknown = {
                i
                for i, seen in reported.items()
                if i not in records and seen.state not in ("terminated", "shutting-down")
            }
            if unknown:  # held as ended, or not at all
                held = set(
                    db.scalars(
                        select(Instance.instance_id).where(Instance.instance_id.in_(unknown))
                    )
                )
                for instance_id in sorted(unknown):
                    kind = "ended" if instance_id in held else "unknown"
                    logger.warning(
                        "zone %s runs %s, which the records hold %s: terminating",
                        zone,
                        instance_id,
                        "as ended" if kind == "ended" else "not at all",
                    )
                    self.metrics.count("clc_disagreements", kind=f"runs_{kind}")
                to_end |= unknown
        return to_end, to_send

    def _apply(self, db: Session, record: Any, seen: ClusterInstance) -> None:
        """What a CC reported of an instance the records hold (``record``, as this
        transaction read it). Only what changed is written: a poll that finds all as it
        was writes nothing, and holds SQLite's write lock for no time."""
        instance_id = record.instance_id
        reported = (seen.node, 0, "accepted", seen.public_ip)
        if (record.node, record.missing_polls, record.dispatch, record.leased_ip) != reported:
            db.execute(
                update(Instance)
                .where(Instance.instance_id == instance_id)
                .values(
                    node=seen.node, missing_polls=0, dispatch="accepted", leased_ip=seen.public_ip
                )
            )
        if seen.state == "running" and record.state == "pending":
            self._move(db, instance_id, ("pending",), "running")
        elif seen.state == "terminated" and record.state in instances.LIVE:
            if self._end(db, instance_id, ("shutting-down",)):
                return
            reason = seen.reason or "InternalError: the instance ended"
            if self._end(db, instance_id, ("pending", "running"), f"Server.{reason}"[:512]):
                logger.warning("%s ended on its node: %s", instance_id, reason)
                self.metrics.count("clc_disagreements", kind="ended_by_cluster")

    def _missing(self, db: Session, record: Any) -> None:
        """A record its CC took and does not list now."""
        missing = record.missing_polls + 1
        if missing < self.config.lost_after_polls:
            db.execute(
                update(Instance)
                .where(Instance.instance_id == record.instance_id)
                .values(missing_polls=missing)
            )
            return
        reason = f"Server.InternalError: zone {record.zone} no longer reports the instance"
        if self._end(db, record.instance_id, ("pending", "running"), reason):
            logger.warning("%s is lost: %s", record.instance_id, reason)
            self.metrics.count("clc_disagreements", kind="lost")

    def _lease_over(self, record: Any) -> bool:
        ends = record.lease_ends_at
        if ends is None or record.state not in ("pending", "running"):
            return False
        if ends.tzinfo is None:  # SQLite hands back naive datetimes
            ends = ends.replace(tzinfo=UTC)
        return bool(ends <= now())

    @staticmethod
    def _move(
        db: Session, instance_id: str, expected: Iterable[str], state: str, reason: str = ""
    ) -> bool:
        """``instance_id`` to ``state``, if it is in an ``expected`` state now."""
        values: dict[str, Any] = {"state": state}
        if reason:
            values["state_reason"] = reason
        if state == "terminated":
            values["terminated_at"] = now()
            values["public_ip"] = ""
        done = db.execute(
            update(Instance)
            .where(Instance.instance_id == instance_id, Instance.state.in_(tuple(expected)))
            .values(**values)
        )
        moved = bool(done.rowcount)  # type: ignore[attr-defined]
        if moved and state == "terminated":  # its addresses: free, and its owner's again
            db.execute(delete(PrivateAddress).where(PrivateAddress.instance_id == instance_id))
            db.execute(
                update(ElasticAddress)
                .where(ElasticAddress.instance_id == instance_id)
                .values(instance_id=None, association_id=None)
            )
        return moved

    def _end(
        self, db: Session, instance_id: str, expected: Iterable[str], reason: str = ""
    ) -> bool:
        """Terminated, for ``reason`` (none: the one it was shut down for)."""
        return self._move(db, instance_id, expected, "terminated", reason)


def _unavailable(zone: str, error: MalleeError) -> Ec2Error:
    return Ec2Error(
        "ServiceUnavailable", f"Zone {zone} does not answer now ({error.code}): try again", 503
    )


def _slots(taken: VmType, of: VmType) -> int:
    """How many instances of ``of`` one instance of ``taken`` displaces, at most."""
    return max(
        1,
        math.ceil(
            max(
                taken.cores / of.cores,
                taken.memory_mb / of.memory_mb,
                taken.disk_gb / of.disk_gb,
            )
        ),
    )


def _nics(instance: Instance) -> dict[str, Any]:
    """An instance's NICs as its CC is to give them. With a VLAN: a private NIC on it,
    with its private address (the VLAN's DHCP at the CC gives it, by MAC), and a public
    one whose address its zone gives. Without: one NIC, on the zone's public network,
    whose DHCP gives it the private address by its MAC."""
    if instance.vlan is None:
        return {
            "public_mac": instances.mac_of(instance.private_ip),
            "public_ip": instance.private_ip,
            "security_groups": instance.group_ids,
        }
    return {
        "public_mac": instances.public_mac_of(instance.private_ip),
        "private_mac": instances.mac_of(instance.private_ip),
        "private_ip": instance.private_ip,
        "vlan": instance.vlan,
        "security_groups": instance.group_ids,
    }
