"""The EC2 actions mallee serves: one table from action name to handler.

A handler takes the caller, the request's parameters as the wire layer parsed them
(names and nesting of botocore's EC2 model) and a database session, calls the domain
modules, and returns the output in the model's shape. Nothing here knows XML or
signatures; an action not in the table is ``InvalidAction``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from mallee.clc import keypairs
from mallee.clc.db import KeyPair
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error

Handler = Callable[[Session, Caller, dict[str, Any]], dict[str, Any]]


def _not_yet(params: dict[str, Any], *names: str) -> None:
    """Parameters EC2 has and mallee does not serve yet: refused, never ignored."""
    if given := [n for n in names if params.get(n)]:
        raise Ec2Error("InvalidParameterValue", f"{', '.join(given)}: not supported yet")


def _key_pair_info(record: KeyPair, public_key: bool) -> dict[str, Any]:
    info = {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
        "KeyType": record.key_type,
        "CreateTime": record.created_at,
        "Tags": [],
    }
    if public_key:
        info["PublicKey"] = record.public_key
    return info


def create_key_pair(db: Session, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "TagSpecifications")
    if params.get("KeyFormat", "pem") != "pem":
        raise Ec2Error("InvalidParameterValue", "KeyFormat: only pem is supported")
    made = keypairs.create(db, caller, params["KeyName"], params.get("KeyType", "rsa"))
    return {
        "KeyPairId": made.record.key_pair_id,
        "KeyName": made.record.name,
        "KeyFingerprint": made.record.fingerprint,
        "KeyMaterial": made.private_key,
    }


def import_key_pair(db: Session, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "TagSpecifications")
    record = keypairs.import_(db, caller, params["KeyName"], params["PublicKeyMaterial"])
    return {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
    }


def describe_key_pairs(db: Session, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    _not_yet(params, "Filters")
    records = keypairs.describe(
        db, caller, params.get("KeyNames", []), params.get("KeyPairIds", [])
    )
    public = bool(params.get("IncludePublicKey"))
    return {"KeyPairs": [_key_pair_info(r, public) for r in records]}


def delete_key_pair(db: Session, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    deleted = keypairs.delete(db, caller, params.get("KeyName"), params.get("KeyPairId"))
    return {"Return": True, **({"KeyPairId": deleted} if deleted else {})}


ACTIONS: dict[str, Handler] = {
    "CreateKeyPair": create_key_pair,
    "ImportKeyPair": import_key_pair,
    "DescribeKeyPairs": describe_key_pairs,
    "DeleteKeyPair": delete_key_pair,
}
