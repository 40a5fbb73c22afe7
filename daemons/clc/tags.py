"""Tags, as EC2 keeps them: up to 50 key/value pairs on each of a user's resources.

A resource's type is read from its id's prefix; only resources the caller owns can be
tagged. ``aws:`` keys are AWS's own and refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from mallee.clc import filters
from mallee.clc.db import Image, Instance, KeyPair, SecurityGroup, Tag, flush_or
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error

MAX_PER_RESOURCE = 50


@dataclass(frozen=True)
class _Kind:
    """A taggable resource: EC2's type name, where its id and owner are kept, and EC2's
    code for "no such"."""

    name: str
    id_column: InstrumentedAttribute[str]
    owner_column: InstrumentedAttribute[str]
    not_found: str


# by id prefix
KINDS = {
    "key-": _Kind("key-pair", KeyPair.key_pair_id, KeyPair.owner, "InvalidKeyPair.NotFound"),
    "sg-": _Kind(
        "security-group", SecurityGroup.group_id, SecurityGroup.owner, "InvalidGroup.NotFound"
    ),
    "i-": _Kind("instance", Instance.instance_id, Instance.owner, "InvalidInstanceID.NotFound"),
    **{
        f"{prefix}-": _Kind("image", Image.image_id, Image.owner, "InvalidAMIID.NotFound")
        for prefix in ("emi", "eki", "eri")
    },
}


def _kind(resource_id: str) -> _Kind:
    for prefix, kind in KINDS.items():
        if resource_id.startswith(prefix):
            return kind
    raise Ec2Error("InvalidID", f"The ID '{resource_id}' is not valid")


def resource_type(resource_id: str) -> str:
    return _kind(resource_id).name


def _check_owned(db: Session, caller: Caller, resource_id: str, lock: bool = False) -> None:
    """``lock``: hold the resource's row until the request ends (FOR NO KEY UPDATE), so
    that requests changing its tags take turns, and a delete of it waits for them."""
    kind = _kind(resource_id)
    query = select(kind.owner_column).where(kind.id_column == resource_id)
    owner = db.scalar(query.with_for_update(key_share=True) if lock else query)
    if owner != caller.user:
        raise Ec2Error(kind.not_found, f"The {kind.name} '{resource_id}' does not exist")


def _checked(tags: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for tag in tags:
        key, value = tag.get("Key", ""), tag.get("Value", "")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key + value):
            raise Ec2Error(
                "InvalidParameterValue", "Tag keys and values hold no control characters"
            )
        if not 1 <= len(key) <= 127 or len(value) > 255:
            raise Ec2Error(
                "InvalidParameterValue", "Tag keys are 1 to 127 characters, values up to 255"
            )
        if key.lower().startswith("aws:"):
            raise Ec2Error("InvalidParameterValue", "Tag keys beginning with 'aws:' are reserved")
        pairs.append((key, value))
    return pairs


def create(
    db: Session, caller: Caller, resource_ids: list[str], tags: list[dict[str, Any]]
) -> None:
    pairs = _checked(tags)
    for resource_id in sorted(resource_ids):  # in one order: two requests cannot deadlock
        _check_owned(db, caller, resource_id, lock=True)
    for resource_id in resource_ids:
        for key, value in pairs:
            existing = db.get(Tag, (resource_id, key))
            if existing is None:
                db.add(Tag(resource_id=resource_id, key=key, value=value, owner=caller.user))
            else:
                existing.value = value
        # another request may have tagged it with the same key meanwhile
        concurrent = Ec2Error(
            "ConcurrentTagAccess", f"The tags of {resource_id} changed meanwhile: try again"
        )
        flush_or(db, concurrent)
        count = select(func.count()).select_from(Tag).where(Tag.resource_id == resource_id)
        if (db.scalar(count) or 0) > MAX_PER_RESOURCE:
            raise Ec2Error(
                "TagLimitExceeded", f"The maximum number of tags ({MAX_PER_RESOURCE}) is exceeded"
            )


def delete_tags(
    db: Session, caller: Caller, resource_ids: list[str], tags: list[dict[str, Any]]
) -> None:
    """Delete the keys named (only where the value matches, when one is given), or
    every tag of the resources when no key is named."""
    for resource_id in resource_ids:
        _check_owned(db, caller, resource_id)
        query = delete(Tag).where(Tag.resource_id == resource_id)
        if not tags:
            db.execute(query)
        for tag in tags:
            one = query.where(Tag.key == tag.get("Key", ""))
            if "Value" in tag:
                one = one.where(Tag.value == tag["Value"])
            db.execute(one)


def forget(db: Session, resource_id: str) -> None:
    """A deleted resource's tags go with it."""
    db.execute(delete(Tag).where(Tag.resource_id == resource_id))


def of(db: Session, resource_id: str) -> list[dict[str, str]]:
    return as_list(of_all(db, [resource_id]).get(resource_id, {}))


def of_all(db: Session, resource_ids: list[str]) -> dict[str, dict[str, str]]:
    """The tags of many resources in one query: id → key → value."""
    found: dict[str, dict[str, str]] = {i: {} for i in resource_ids}
    for tag in db.scalars(select(Tag).where(Tag.resource_id.in_(resource_ids))):
        found[tag.resource_id][tag.key] = tag.value
    return found


def as_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """EC2's shape of a resource's tags, by key."""
    return [{"Key": key, "Value": tags[key]} for key in sorted(tags)]


FIELDS: filters.Fields = {
    "resource-id": lambda t: [t.resource_id],
    "resource-type": lambda t: [resource_type(t.resource_id)],
    "key": lambda t: [t.key],
    "value": lambda t: [t.value],
}


def describe(db: Session, caller: Caller, wanted: list[dict[str, Any]]) -> list[dict[str, str]]:
    query = select(Tag).order_by(Tag.resource_id, Tag.key)
    if not caller.admin:
        query = query.where(Tag.owner == caller.user)
    return [
        {
            "ResourceId": t.resource_id,
            "ResourceType": resource_type(t.resource_id),
            "Key": t.key,
            "Value": t.value,
        }
        for t in filters.apply(list(db.scalars(query)), wanted, FIELDS)
    ]


def from_specifications(
    db: Session, caller: Caller, resource_id: str, specifications: list[dict[str, Any]]
) -> None:
    """``TagSpecification.N`` of a create call: the tags for the resource it makes."""
    kind = resource_type(resource_id)
    for spec in specifications:
        if spec.get("ResourceType") != kind:
            asked = spec.get("ResourceType")
            raise Ec2Error(
                "InvalidParameterValue",
                f"TagSpecification ResourceType {asked!r}: this call makes a {kind}",
            )
        create(db, caller, [resource_id], spec.get("Tags", []))
