"""The cloud's clusters: each CC is an availability zone (seed §2.1), registered by an
admin, asked by the CLC how much room it has."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.cc.client import CcClient, TypeRoom
from mallee.clc.db import Cluster
from mallee.common.capacity import VmType
from mallee.common.errors import MalleeError

ZONE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class ZoneState:
    """A zone as the CLC sees it now: its room per type, or why its CC did not say."""

    name: str
    rooms: list[TypeRoom]
    problem: str = ""


def add(db: Session, name: str, url: str) -> None:
    if not ZONE_NAME.fullmatch(name) or name == "verbose":
        raise ValueError(
            f"zone name {name!r}: lower-case letters, digits and '-', at most 63 "
            "('verbose' asks for the admins' listing)"
        )
    url = url.rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{url!r}: the CC's URL, https://HOST:8774")
    if db.get(Cluster, name) is not None:
        raise ValueError(f"cluster {name!r} already exists")
    if db.scalars(select(Cluster).where(Cluster.url == url)).first() is not None:
        raise ValueError(f"a cluster at {url} exists already")
    db.add(Cluster(name=name, url=url))


def remove(db: Session, name: str) -> None:
    cluster = db.get(Cluster, name)
    if cluster is None:
        raise ValueError(f"no cluster {name!r}")
    db.delete(cluster)


def all_clusters(db: Session) -> list[Cluster]:
    return list(db.scalars(select(Cluster).order_by(Cluster.name)))


def state_of(
    cluster: Cluster, client: Callable[[str], CcClient], catalog: list[VmType]
) -> ZoneState:
    try:
        return ZoneState(cluster.name, client(cluster.url).describe_resources(catalog))
    except MalleeError as e:
        return ZoneState(cluster.name, [], f"{e.code}: {e.message}")
