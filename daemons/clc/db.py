"""The CLC's records (SQLAlchemy 2), and the schema's migrations (Alembic).

SQLite, one file, by default; any SQLAlchemy URL (PostgreSQL) for sites that outgrow
it. The schema is made and moved on only by the migrations in ``migrations/``, run at
start (``migrate``); a SQLite file is made readable by mallee only: it holds secret keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class AccessKey(Base):
    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class KeyPair(Base):
    __tablename__ = "key_pairs"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    key_pair_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    key_type: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(16384))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Cluster(Base):
    """A cluster (a CC) is an availability zone, named as users see it."""

    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class SecurityGroup(Base):
    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    group_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class GroupVlan(Base):
    """The VLAN of a security group's instances on the private overlay (seed §2.2: each
    user's instance set, per group, on a VLAN of its own), from its first instance until
    the group is deleted. VLAN N's addresses are the Nth slice of the private subnet."""

    __tablename__ = "group_vlans"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.group_id", ondelete="CASCADE"), primary_key=True
    )
    vlan: Mapped[int] = mapped_column(unique=True)


class SecurityGroupRule(Base):
    """One allowed flow: ``protocol`` ("tcp", "udp", "icmp" or "-1" for all) over a
    port range (ICMP: type and code; -1 for any), from (ingress) or to (egress) either
    a CIDR or the members of another group."""

    __tablename__ = "security_group_rules"
    __table_args__ = (
        UniqueConstraint(
            "group_id", "direction", "protocol", "from_port", "to_port", "cidr", "peer_group_id"
        ),
    )

    rule_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.group_id", ondelete="CASCADE")
    )
    direction: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str] = mapped_column(String(8))
    from_port: Mapped[int] = mapped_column()
    to_port: Mapped[int] = mapped_column()
    cidr: Mapped[str] = mapped_column(String(64), default="")
    peer_group_id: Mapped[str] = mapped_column(String(32), default="")


class Tag(Base):
    """A user's tag on one of their resources (at most one value per key)."""

    __tablename__ = "tags"

    resource_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))


class Image(Base):
    """A registered image: a file of the CLC's image store (named by its digest), of
    one kind: a machine image (``emi-``), a kernel (``eki-``) or a ramdisk (``eri-``).
    A machine image booted by its own kernel names one of each."""

    __tablename__ = "images"

    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))  # a user, or "mallee" for the cloud's
    kind: Mapped[str] = mapped_column(String(8))  # machine, kernel, ramdisk
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(71))  # sha256:HEX
    size: Mapped[int] = mapped_column(BigInteger)
    disk_format: Mapped[str] = mapped_column(String(8))  # raw, qcow2
    kernel_id: Mapped[str | None] = mapped_column(String(32))
    ramdisk_id: Mapped[str | None] = mapped_column(String(32))
    public: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="available")  # or disabled
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Reservation(Base):
    """One RunInstances: its instances, and the client token that makes a retry of the
    same request answer the same reservation (``request_digest`` tells the same from a
    different request with the token reused)."""

    __tablename__ = "reservations"
    __table_args__ = (UniqueConstraint("owner", "client_token"),)

    reservation_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    client_token: Mapped[str | None] = mapped_column(String(64))
    request_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Instance(Base):
    """An instance as the CLC knows it: what its user asked for, and its state as its
    cluster last reported it.

    ``dispatch`` says how far the CLC got in handing it to its CC: "queued" (not sent),
    "sent" (sent; no answer recorded: a CLC that died here sends it again, and the CC
    refuses an id it has already), "accepted" (the CC took it: from now on only the
    CC's reports move its state)."""

    __tablename__ = "instances"
    __table_args__ = (  # as migrations 0005 and 0008 make them
        Index("instances_by_owner_state", "owner", "state"),
        Index("instances_by_zone_state", "zone", "state"),
        Index("instances_by_leased_ip", "leased_ip"),  # the metadata service asks by it
    )

    instance_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    reservation_id: Mapped[str] = mapped_column(
        ForeignKey("reservations.reservation_id", ondelete="CASCADE")
    )
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    launch_index: Mapped[int] = mapped_column()
    image_id: Mapped[str] = mapped_column(String(32))
    kernel_id: Mapped[str | None] = mapped_column(String(32))
    ramdisk_id: Mapped[str | None] = mapped_column(String(32))
    instance_type: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64))
    key_name: Mapped[str | None] = mapped_column(String(255))
    # Read only when asked for (each may be kilobytes; a listing holds thousands).
    public_key: Mapped[str | None] = mapped_column(Text, deferred=True)  # as at launch
    user_data: Mapped[str | None] = mapped_column(Text, deferred=True)  # base64, as given
    group_ids: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    state_reason: Mapped[str] = mapped_column(String(512), default="")
    dispatch: Mapped[str] = mapped_column(String(8), default="queued")
    node: Mapped[str] = mapped_column(String(64), default="")
    missing_polls: Mapped[int] = mapped_column(default=0)
    private_ip: Mapped[str] = mapped_column(String(45), default="")
    vlan: Mapped[int | None] = mapped_column()  # of its private NIC; none: it has none
    public_ip: Mapped[str] = mapped_column(String(45), default="")  # an elastic address
    # the public address the zone's DHCP leases it (public_mode managed or static)
    leased_ip: Mapped[str] = mapped_column(String(45), default="")
    launch_time: Mapped[datetime] = mapped_column(default=utc_now)
    lease_ends_at: Mapped[datetime | None] = mapped_column()
    terminated_at: Mapped[datetime | None] = mapped_column()


class PrivateAddress(Base):
    """A private address held by a live instance: the primary key makes two requests
    that pick the same one conflict, and ending the instance frees it."""

    __tablename__ = "private_addresses"

    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.instance_id", ondelete="CASCADE"), unique=True
    )


class ElasticAddress(Base):
    """A public address a user allocated from the cloud's pool, and the instance it is
    associated with, if any."""

    __tablename__ = "elastic_addresses"

    public_ip: Mapped[str] = mapped_column(String(45), primary_key=True)
    allocation_id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.instance_id", ondelete="SET NULL"), unique=True
    )
    association_id: Mapped[str | None] = mapped_column(String(32))


def flush_or(session: Session, conflict: Exception, gone: Exception | None = None) -> None:
    """Write what the session holds now; a unique constraint it breaks (a name taken, a
    rule made by a concurrent request) raises ``conflict``, a foreign key (what a new
    row belongs to, deleted by a concurrent request) ``gone`` when given. The
    request's transaction is rolled back as the error leaves it."""
    try:
        session.flush()
    except IntegrityError as e:
        raise (gone if gone is not None and _foreign_key(e) else conflict) from None


def _foreign_key(error: IntegrityError) -> bool:
    """PostgreSQL's foreign_key_violation, SQLite's SQLITE_CONSTRAINT_FOREIGNKEY."""
    orig = error.orig
    return getattr(orig, "sqlstate", None) == "23503" or (
        getattr(orig, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_FOREIGNKEY"
    )


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (made on first use)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)
    command.upgrade(config, "head")


@dataclass(frozen=True)
class Sessions:
    """The CLC's transactions: ``write`` for whatever may write, ``read`` for what only
    reads. On SQLite a writing transaction takes the write lock at its start (BEGIN
    IMMEDIATE), waiting up to 30 s for it: one that read first and then wrote would
    otherwise fail at once ("database is locked") whenever another had written since
    its read began. Readers take no lock (write-ahead log). PostgreSQL needs neither."""

    read: sessionmaker[Session]
    write: sessionmaker[Session]


def sessions_for(url: str) -> Sessions:
    reader = _engine(url, immediate=False)
    writer = _engine(url, immediate=True) if reader.dialect.name == "sqlite" else reader
    return Sessions(
        sessionmaker(reader, expire_on_commit=False), sessionmaker(writer, expire_on_commit=False)
    )


def _engine(url: str, immediate: bool) -> Engine:
    if not make_url(url).drivername.startswith("sqlite"):
        return create_engine(url)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def configure(connection: Any, _record: object) -> None:
        connection.isolation_level = None  # BEGIN is ours (below), not the driver's
        cursor = connection.cursor()
        # SQLite checks foreign keys only when asked; with a write-ahead log, a request
        # reading while it waits on a CC does not hold up the poller's writes.
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
