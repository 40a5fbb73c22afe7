"""Elastic addresses: public addresses of the site's pool (``[clc] public_addresses``)
that a user allocates, associates with one of their instances, and releases.

These are the CLC's records; the clusters' networks make them reach the instances.
An address follows EC2-Classic: associating it with an instance that has one already
replaces that one, and an instance that ends gives its address back to its owner
unassociated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc import instances
from mallee.clc.db import ElasticAddress, Instance, flush_or
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error


def pool(entries: list[str]) -> Iterator[str]:
    """Every address of the pool, in the order the admin gave them."""
    for entry in entries:
        if "-" in entry:
            first, last = (ipaddress.IPv4Address(a.strip()) for a in entry.split("-", 1))
            for n in range(int(first), int(last) + 1):
                yield str(ipaddress.IPv4Address(n))
        else:
            network = ipaddress.IPv4Network(entry, strict=False)
            yield from (str(a) for a in (network.hosts() if network.prefixlen < 31 else network))


def check_pool(entries: list[str], private_subnet: str) -> None:
    """Refuse a pool the config gives wrongly, naming the entry, at start: malformed,
    or overlapping the instances' private addresses (an elastic address must never be
    one of them, or the CC's translations would catch instances' own traffic)."""
    try:
        private = ipaddress.IPv4Network(private_subnet, strict=False)
    except ValueError as e:
        raise ValueError(f"[clc] private_subnet: {private_subnet!r}: {e}") from None
    for entry in entries:
        try:
            first = next(pool([entry]), None)
            if "-" in entry:
                low, high = (ipaddress.IPv4Address(a.strip()) for a in entry.split("-", 1))
            else:
                network = ipaddress.IPv4Network(entry, strict=False)
                low, high = network[0], network[-1]
        except ValueError as e:
            raise ValueError(f"[clc] public_addresses: {entry!r}: {e}") from None
        if first is not None and low <= private[-1] and private[0] <= high:
            raise ValueError(
                f"[clc] public_addresses: {entry!r} overlaps private_subnet {private}: elastic"
                " addresses must lie outside the instances' private addresses"
            )


def allocate(db: Session, caller: Caller, entries: list[str]) -> ElasticAddress:
    taken = set(db.scalars(select(ElasticAddress.public_ip)))
    free = next((a for a in pool(entries) if a not in taken), None)
    if free is None:
        raise Ec2Error("AddressLimitExceeded", "The cloud has no public address left to allocate")
    address = ElasticAddress(
        public_ip=free, allocation_id=instances.new_id("eipalloc"), owner=caller.user
    )
    db.add(address)
    flush_or(db, Ec2Error("RequestLimitExceeded", "The address was taken meanwhile", 503))
    return address


def find(
    db: Session, caller: Caller, public_ip: str | None, allocation_id: str | None
) -> ElasticAddress:
    """The caller's address (an admin's: anyone's) named by address or allocation id."""
    if public_ip:
        query = select(ElasticAddress).where(ElasticAddress.public_ip == public_ip)
        missing = Ec2Error("InvalidAddress.NotFound", f"Address '{public_ip}' not found.")
    elif allocation_id:
        query = select(ElasticAddress).where(ElasticAddress.allocation_id == allocation_id)
        missing = Ec2Error(
            "InvalidAllocationID.NotFound", f"The allocation ID '{allocation_id}' does not exist"
        )
    else:
        raise Ec2Error("MissingParameter", "The request must name PublicIp or AllocationId")
    if not caller.admin:
        query = query.where(ElasticAddress.owner == caller.user)
    found = db.scalars(query.with_for_update()).first()
    if found is None:
        raise missing
    return found


def describe(
    db: Session, caller: Caller, public_ips: list[str], allocation_ids: list[str]
) -> list[ElasticAddress]:
    query = select(ElasticAddress).order_by(ElasticAddress.public_ip)
    if not caller.admin:
        query = query.where(ElasticAddress.owner == caller.user)
    found = list(db.scalars(query))
    if missing := sorted(set(public_ips) - {a.public_ip for a in found}):
        raise Ec2Error("InvalidAddress.NotFound", f"Address '{missing[0]}' not found.")
    if missing := sorted(set(allocation_ids) - {a.allocation_id for a in found}):
        raise Ec2Error(
            "InvalidAllocationID.NotFound", f"The allocation ID '{missing[0]}' does not exist"
        )
    return [
        a
        for a in found
        if (not public_ips or a.public_ip in public_ips)
        and (not allocation_ids or a.allocation_id in allocation_ids)
    ]


def associate(db: Session, address: ElasticAddress, instance: Instance) -> str:
    if instance.owner != address.owner:
        raise Ec2Error(
            "InvalidInstanceID.NotFound",
            f"The instance ID '{instance.instance_id}' does not exist",
        )
    if instance.state not in ("pending", "running"):
        raise Ec2Error(
            "IncorrectInstanceState", f"The instance '{instance.instance_id}' is {instance.state}"
        )
    held = db.scalars(
        select(ElasticAddress).where(ElasticAddress.instance_id == instance.instance_id)
    ).first()
    if held is not None and held is not address:
        disassociate(db, held)
    if address.instance_id and address.instance_id != instance.instance_id:
        disassociate(db, address)
    address.instance_id = instance.instance_id
    address.association_id = instances.new_id("eipassoc")
    instance.public_ip = address.public_ip
    db.flush()
    return address.association_id


def disassociate(db: Session, address: ElasticAddress) -> None:
    if address.instance_id:
        instance = db.get(Instance, address.instance_id)
        if instance is not None and instance.public_ip == address.public_ip:
            instance.public_ip = ""
    address.instance_id = None
    address.association_id = None
    db.flush()


def by_association(db: Session, caller: Caller, association_id: str) -> ElasticAddress:
    query = select(ElasticAddress).where(ElasticAddress.association_id == association_id)
    if not caller.admin:
        query = query.where(ElasticAddress.owner == caller.user)
    found = db.scalars(query.with_for_update()).first()
    if found is None:
        raise Ec2Error(
            "InvalidAssociationID.NotFound",
            f"The association ID '{association_id}' does not exist",
        )
    return found
