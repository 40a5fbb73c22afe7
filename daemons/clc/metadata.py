"""The metadata service's content: what an instance learns of itself at
http://169.254.169.254/, at every version EC2 has published, the way cloud-init's EC2
data source and the tiny guest read it.

The asking instance is the live one holding the request's source address (the
clusters' redirect keeps it), or the address a CC's metadata proxy vouches for
(vouch.py). IMDSv2: ``PUT /latest/api/token`` gives a token bound to
that address for the TTL asked; a request bearing a token must bear a valid one, a
request bearing none is served too (IMDSv1, which stock images still use).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Union

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc import instances, securitygroups
from mallee.clc.config import ClcConfig
from mallee.clc.db import Instance, PrivateAddress

# EC2's metadata versions (GET / lists them); each serves the same tree here.
VERSIONS = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "latest",
]
MAX_TOKEN_TTL_S = 21600

Tree = dict[str, Union[str, bytes, "Tree"]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain"


def _not_found(what: str) -> Answer:
    return Answer(404, f"Not Found: {what}\n".encode())


class Tokens:
    """IMDSv2 tokens: the address they were given to and their expiry, signed with a key
    of this process (a restarted CLC asks guests for new ones with a 401, as EC2 may)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _mac(self, claim: bytes) -> str:
        return hmac.new(self._key, claim, hashlib.sha256).hexdigest()

    def issue(self, address: str, ttl_s: int) -> str:
        claim = f"{address} {int(time.time()) + ttl_s}".encode()
        return base64.urlsafe_b64encode(claim).decode() + "." + self._mac(claim)

    def valid(self, token: str, address: str) -> bool:
        claim_text, _, mac = token.partition(".")
        try:
            claim = base64.urlsafe_b64decode(claim_text.encode("ascii"))
            owner, expiry = claim.decode().split()
            expires = int(expiry)
        except (binascii.Error, UnicodeError, ValueError):
            return False
        return (
            hmac.compare_digest(mac, self._mac(claim))
            and owner == address
            and time.time() < expires
        )


def token_ttl(text: str | None) -> int | None:
    """The TTL a token PUT asks for, or None when it is missing or out of range."""
    try:
        ttl = int(text or "")
    except ValueError:
        return None
    return ttl if 1 <= ttl <= MAX_TOKEN_TTL_S else None


def instance_at(db: Session, address: str) -> Instance | None:
    """The live instance whose private address, or whose public NIC's leased address
    (public_mode managed or static: its requests come from that NIC), is ``address``."""
    live = Instance.state.in_(("pending", "running"))
    query = (
        select(Instance)
        .join(PrivateAddress, PrivateAddress.instance_id == Instance.instance_id)
        .where(PrivateAddress.address == address, live)
    )
    found = db.scalars(query).first()
    if found is None:
        found = db.scalars(select(Instance).where(Instance.leased_ip == address, live)).first()
    return found


def _tree(db: Session, r: Instance, region: str, subnet: str) -> Tree:
    host = instances.dns_name(r.private_ip, region)
    mac = instances.mac_of(r.private_ip)
    groups = securitygroups.by_ids(db, set(r.group_ids))
    # cloud-init on a platform it takes for EC2 configures exactly the NICs listed here
    nic: Tree = {
        "device-number": "0",
        "local-hostname": host,
        "local-ipv4s": r.private_ip,
        "mac": mac,
        "subnet-ipv4-cidr-block": subnet,
    }
    if public_ip := instances.public_address(r):
        nic["public-ipv4s"] = public_ip
    meta: Tree = {
        "ami-id": r.image_id,
        "ami-launch-index": str(r.launch_index),
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/vda", "root": "/dev/vda"},
        "hostname": host,
        "instance-action": "none",
        "instance-id": r.instance_id,
        "instance-type": r.instance_type,
        "local-hostname": host,
        "local-ipv4": r.private_ip,
        "mac": mac,
        "network": {"interfaces": {"macs": {mac: nic}}},
        "placement": {"availability-zone": r.zone, "region": region},
        "public-hostname": host,
        "reservation-id": r.reservation_id,
        "security-groups": "\n".join(g.name for g in groups),
        "services": {"domain": f"{region}.internal", "partition": "aws"},
    }
    if public_ip:
        meta["public-ipv4"] = public_ip
    if r.kernel_id:
        meta["kernel-id"] = r.kernel_id
    if r.ramdisk_id:
        meta["ramdisk-id"] = r.ramdisk_id
    if r.public_key:
        meta["public-keys"] = {"0": {"openssh-key": r.public_key.strip() + "\n"}}
    launched = r.launch_time if r.launch_time.tzinfo else r.launch_time.replace(tzinfo=UTC)
    document = {
        "accountId": r.owner,
        "architecture": "x86_64",
        "availabilityZone": r.zone,
        "imageId": r.image_id,
        "instanceId": r.instance_id,
        "instanceType": r.instance_type,
        "kernelId": r.kernel_id,
        "pendingTime": launched.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": r.private_ip,
        "ramdiskId": r.ramdisk_id,
        "region": region,
        "version": "2017-09-30",
    }
    tree: Tree = {
        "meta-data": meta,
        "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
    }
    if r.user_data:
        tree["user-data"] = base64.b64decode(r.user_data)
    return tree


def _listing(node: Tree) -> str:
    """A folder's listing: its entries, folders with a trailing slash."""
    return "\n".join(f"{k}/" if isinstance(v, dict) else k for k, v in node.items())


def answer(db: Session, address: str, path: str, config: ClcConfig) -> Answer:
    """The answer to ``GET /<path>`` from the instance at ``address``."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return Answer(200, "\n".join(VERSIONS).encode())
    if parts[0] not in VERSIONS:
        return _not_found(path)
    instance = instance_at(db, address)
    if instance is None:
        return Answer(404, f"No instance of this cloud has the address {address}\n".encode())
    subnet = instances.subnet_of(config, instance.vlan)
    node: str | bytes | Tree = _tree(db, instance, config.region, subnet)
    for part in parts[1:]:
        if not isinstance(node, dict) or part not in node:
            return _not_found(path)
        node = node[part]
    if parts[1:] == ["meta-data", "public-keys"]:  # EC2 lists keys as INDEX=NAME
        return Answer(200, f"0={instance.key_name}".encode())
    if isinstance(node, dict):
        return Answer(200, _listing(node).encode())
    if isinstance(node, bytes):
        return Answer(200, node, "application/octet-stream")
    return Answer(200, node.encode())
