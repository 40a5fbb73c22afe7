"""Instances as users see them: RunInstances resolved into records (image, kernel,
ramdisk, key, groups, type, zones by the SLA chain), listed, and ended.

Records are written here, in the request's transaction; VmControl sends them to their
clusters once it commits, and moves their states by what the clusters report.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc import images, securitygroups, sla
from mallee.clc.config import ClcConfig
from mallee.clc.db import GroupVlan, Instance, KeyPair, PrivateAddress, Reservation, flush_or
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error
from mallee.common import slices
from mallee.common.capacity import VmType

MAX_USER_DATA = 16384  # bytes, decoded (EC2's limit)
MAX_COUNT = 1000  # instances per request: what a CC takes at once
MAX_VLAN = 4094  # 802.1Q's last
STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
LIVE = ("pending", "running", "shutting-down")  # states of an instance not ended


@dataclass(frozen=True)
class Launch:
    """A RunInstances as the SLA chain left it, resolved and ready to record."""

    reservation: Reservation
    instances: list[Instance]
    repeated: bool  # an earlier request's answer, found by its client token


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def _digest(params: dict[str, Any]) -> str:
    """What makes two requests with one client token the same request."""
    same = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


def _user_data(text: str | None) -> str | None:
    if not text:
        return None
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Ec2Error("InvalidUserData.Malformed", "User data must be base64-encoded") from None
    if len(decoded) > MAX_USER_DATA:
        raise Ec2Error("InvalidParameterValue", f"User data is limited to {MAX_USER_DATA} bytes")
    return text


def mac_of(address: str) -> str:
    """The MAC of the NIC with an instance's private address: d0:0d: and its four
    bytes (Eucalyptus' way), so DHCP can tell it."""
    return "d0:0d:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def public_mac_of(address: str) -> str:
    """The MAC of the public NIC of the instance at private ``address``, when it has a
    private NIC too: d0:0e: and the private address's four bytes."""
    return "d0:0e:" + mac_of(address).removeprefix("d0:0d:")


def subnet_of(config: ClcConfig, vlan: int | None) -> str:
    """The subnet of an instance's private address: its VLAN's slice, or the whole
    private subnet when the cloud has no overlay."""
    if vlan is None:
        return config.private_subnet
    return str(slices.slice_of(config.private_subnet, config.private_slice_prefix, vlan))


def _vlan(db: Session, config: ClcConfig, group_id: str) -> int | None:
    """The VLAN of the group's instances; None without an overlay. A group keeps its
    VLAN while it lives; one without it takes the lowest VLAN no live instance is on
    (from a group that has none live now, if need be: it gets another at its next)."""
    if not config.private_slice_prefix:
        return None
    held = db.get(GroupVlan, group_id)
    if held is not None:
        return held.vlan
    count = slices.count(config.private_subnet, config.private_slice_prefix)
    used = select(Instance.vlan).where(Instance.state.in_(LIVE), Instance.vlan.is_not(None))
    busy = set(db.scalars(used.distinct()))
    kept = {row.vlan: row for row in db.scalars(select(GroupVlan))}
    candidates = [v for v in range(1, min(count, MAX_VLAN + 1)) if v not in busy]
    # never given first, then those of groups with no instance left on them
    free = next((v for v in candidates if v not in kept), None)
    if free is None and candidates:
        free = candidates[0]
        db.delete(kept[free])
        db.flush()
    if free is None:
        raise Ec2Error(
            "SubnetLimitExceeded",
            f"Every VLAN of the private overlay is taken: private_subnet {config.private_subnet}"
            f" cut into /{config.private_slice_prefix} slices has {min(count - 1, MAX_VLAN)},"
            " one per security group that has live instances",
        )
    db.add(GroupVlan(group_id=group_id, vlan=free))
    flush_or(db, Ec2Error("RequestLimitExceeded", "A VLAN was taken meanwhile", 503))
    return free


def dns_name(address: str, region: str) -> str:
    return f"ip-{address.replace('.', '-')}.{region}.internal"


def _allocate(db: Session, subnet: str, count: int) -> list[str]:
    """The lowest ``count`` addresses of ``subnet`` no live instance holds (its first
    host address is the network's gateway)."""
    network = ipaddress.IPv4Network(subnet)
    held = set(db.scalars(select(PrivateAddress.address)))
    hosts = network.hosts()
    next(hosts, None)  # the gateway's
    free = []
    for host in hosts:
        if str(host) not in held:
            free.append(str(host))
            if len(free) == count:
                return free
    raise Ec2Error(
        "InsufficientFreeAddressesInSubnet",
        f"The private subnet {subnet} has {len(free)} free addresses; {count} asked",
    )


def _counts(params: dict[str, Any]) -> tuple[int, int]:
    low, high = params["MinCount"], params["MaxCount"]
    if low < 1 or high < low:
        raise Ec2Error(
            "InvalidParameterValue",
            f"MinCount ({low}) must be at least 1 and at most MaxCount ({high})",
        )
    if high > MAX_COUNT:
        raise Ec2Error("InvalidParameterValue", f"MaxCount is at most {MAX_COUNT}")
    return low, high


def _key(db: Session, caller: Caller, name: str | None) -> KeyPair | None:
    if not name:
        return None
    key = db.scalars(
        select(KeyPair).where(KeyPair.owner == caller.user, KeyPair.name == name)
    ).first()
    if key is None:
        raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{name}' does not exist")
    return key


def _groups(db: Session, caller: Caller, params: dict[str, Any]) -> list[str]:
    names, ids = params.get("SecurityGroups", []), params.get("SecurityGroupIds", [])
    groups = [securitygroups.find(db, caller.user, None, n, lock="keep") for n in names]
    groups += [securitygroups.find(db, caller.user, i, None, lock="keep") for i in ids]
    if not groups:
        groups = [securitygroups.default_group(db, caller.user)]
    return list(dict.fromkeys(g.group_id for g in groups))


def run(
    db: Session,
    caller: Caller,
    params: dict[str, Any],
    catalog: list[VmType],
    config: ClcConfig,
    chain: list[sla.Policy],
    model: sla.Model,
) -> Launch:
    token = params.get("ClientToken") or None
    digest = _digest(params)
    if token is not None:
        if len(token) > 64:
            raise Ec2Error("InvalidParameterValue", "ClientToken is at most 64 characters")
        earlier = db.scalars(
            select(Reservation).where(
                Reservation.owner == caller.user, Reservation.client_token == token
            )
        ).first()
        if earlier is not None:
            if earlier.request_digest != digest:
                raise Ec2Error(
                    "IdempotentParameterMismatch",
                    f"The client token '{token}' was used with different parameters",
                )
            return Launch(earlier, of_reservation(db, earlier.reservation_id), True)
    low, high = _counts(params)
    types = {vm.name: vm for vm in catalog}
    type_name = params.get("InstanceType") or catalog[0].name  # m1.small unless a site says
    if type_name not in types:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Invalid value '{type_name}' for InstanceType (this cloud has: {', '.join(types)})",
        )
    if not params.get("ImageId"):
        raise Ec2Error("MissingParameter", "The request must contain the parameter ImageId")
    image = images.launchable(db, caller, params["ImageId"], "machine")
    kernel_id = params.get("KernelId") or image.kernel_id
    ramdisk_id = params.get("RamdiskId") or (
        image.ramdisk_id if kernel_id == image.kernel_id else None
    )
    if kernel_id:
        images.launchable(db, caller, kernel_id, "kernel")
    if ramdisk_id:
        if not kernel_id:
            raise Ec2Error("InvalidParameterValue", "A ramdisk needs a kernel")
        images.launchable(db, caller, ramdisk_id, "ramdisk")
    key = _key(db, caller, params.get("KeyName"))
    group_ids = _groups(db, caller, params)
    user_data = _user_data(params.get("UserData"))
    for spec in params.get("TagSpecifications", []):
        if spec.get("ResourceType") != "instance":
            raise Ec2Error(
                "InvalidParameterValue",
                f"TagSpecification ResourceType {spec.get('ResourceType')!r}: "
                "RunInstances tags instances",
            )
    asked = sla.LaunchRequest(
        owner=caller.user,
        vm_type=types[type_name],
        min_count=low,
        max_count=high,
        zone=(params.get("Placement") or {}).get("AvailabilityZone", ""),
    )
    placed = sla.apply(chain, asked, model, config)
    reservation = Reservation(
        reservation_id=new_id("r"), owner=caller.user, client_token=token, request_digest=digest
    )
    db.add(reservation)
    flush_or(  # the same token in a concurrent request: the client's retry finds it
        db, Ec2Error("RequestLimitExceeded", f"The client token '{token}' is in use now", 503)
    )
    vlan = _vlan(db, config, group_ids[0])
    addresses = _allocate(db, subnet_of(config, vlan), len(placed.zones))
    launched = datetime.now(UTC)
    lease_ends = launched + timedelta(hours=placed.lease_hours) if placed.lease_hours else None
    records = [
        Instance(
            instance_id=new_id("i"),
            reservation_id=reservation.reservation_id,
            owner=caller.user,
            launch_index=index,
            image_id=image.image_id,
            kernel_id=kernel_id,
            ramdisk_id=ramdisk_id,
            instance_type=type_name,
            zone=zone,
            key_name=key.name if key else None,
            public_key=key.public_key if key else None,
            user_data=user_data,
            group_ids=group_ids,
            state="pending",
            state_reason="",
            dispatch="queued",
            node="",
            missing_polls=0,
            private_ip=address,
            vlan=vlan,
            public_ip="",
            launch_time=launched,
            lease_ends_at=lease_ends,
        )
        for index, (zone, address) in enumerate(zip(placed.zones, addresses, strict=True))
    ]
    db.add_all(records)
    db.flush()
    db.add_all(PrivateAddress(address=r.private_ip, instance_id=r.instance_id) for r in records)
    flush_or(  # taken by a concurrent request: the client's retry gets others
        db, Ec2Error("RequestLimitExceeded", "Private addresses were taken meanwhile", 503)
    )
    return Launch(reservation, records, False)


def of_reservation(db: Session, reservation_id: str) -> list[Instance]:
    query = select(Instance).where(Instance.reservation_id == reservation_id)
    return list(db.scalars(query.order_by(Instance.launch_index)))


class Listed(NamedTuple):
    """An instance as listings read it: the columns they show (and filter and group by),
    ``group_ids`` last. A plain tuple, not an ORM object nor SQLAlchemy's row: a listing
    may hold thousands, each read, compared and hashed (to name its description) at C
    speed."""

    instance_id: str
    reservation_id: str
    owner: str
    launch_index: int
    image_id: str
    kernel_id: str | None
    ramdisk_id: str | None
    instance_type: str
    zone: str
    key_name: str | None
    state: str
    state_reason: str
    node: str
    private_ip: str
    public_ip: str
    leased_ip: str
    launch_time: datetime
    group_ids: list[str]


LISTED_COLUMNS = [getattr(Instance, name) for name in Listed._fields]


def public_address(r: Listed | Instance) -> str:
    """What EC2 shows as an instance's public address: its elastic address, else the one
    its zone's DHCP leases it (public_mode managed or static); none once it ended."""
    return "" if r.state == "terminated" else r.public_ip or r.leased_ip


def visible(
    db: Session, caller: Caller, instance_ids: list[str], terminated_visible_s: float
) -> list[Listed]:
    """The caller's instances (an admin's: everyone's), by launch; those named must all
    be there. Terminated ones show for ``terminated_visible_s`` after they ended."""
    query = select(*LISTED_COLUMNS).order_by(Instance.launch_time, Instance.launch_index)
    if not caller.admin:
        query = query.where(Instance.owner == caller.user)
    if instance_ids:
        query = query.where(Instance.instance_id.in_(instance_ids))
    else:
        since = datetime.now(UTC) - timedelta(seconds=terminated_visible_s)
        query = query.where((Instance.terminated_at.is_(None)) | (Instance.terminated_at >= since))
    found = [Listed._make(row) for row in db.execute(query)]
    if missing := sorted(set(instance_ids) - {i.instance_id for i in found}):
        raise Ec2Error(
            "InvalidInstanceID.NotFound", f"The instance ID '{', '.join(missing)}' does not exist"
        )
    return found


def owned(db: Session, caller: Caller, instance_ids: list[str]) -> list[Instance]:
    """The caller's instances named (an admin may act on anyone's), locked for change."""
    query = select(Instance).where(Instance.instance_id.in_(instance_ids))
    if not caller.admin:
        query = query.where(Instance.owner == caller.user)
    found = {i.instance_id: i for i in db.scalars(query.with_for_update())}
    if missing := [i for i in instance_ids if i not in found]:
        raise Ec2Error(
            "InvalidInstanceID.NotFound", f"The instance ID '{', '.join(missing)}' does not exist"
        )
    return [found[i] for i in dict.fromkeys(instance_ids)]


def terminate(db: Session, caller: Caller, instance_ids: list[str]) -> list[tuple[Instance, str]]:
    """Mark the instances ``shutting-down`` (those not ended yet); each with its state
    before. VmControl asks their clusters to end them."""
    changed = []
    for instance in owned(db, caller, instance_ids):
        before = instance.state
        if before in ("pending", "running"):
            instance.state = "shutting-down"
            instance.state_reason = "Client.UserInitiatedShutdown: User initiated shutdown"
        changed.append((instance, before))
    return changed


def client_tokens(db: Session, reservation_ids: set[str]) -> dict[str, str | None]:
    query = select(Reservation.reservation_id, Reservation.client_token).where(
        Reservation.reservation_id.in_(reservation_ids)
    )
    return {reservation: token for reservation, token in db.execute(query)}
