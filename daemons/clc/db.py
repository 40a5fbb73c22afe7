"""The CLC's records (SQLAlchemy 2), and the schema's migrations (Alembic).

SQLite, one file, by default; any SQLAlchemy URL (PostgreSQL) for sites that outgrow
it. The schema is made and moved on only by the migrations in ``migrations/``, run at
start (``migrate``); a SQLite file is made readable by mallee only: it holds secret keys.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, ForeignKey, String, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine, make_url
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


def flush_or(session: Session, conflict: Exception) -> None:
    """Write what the session holds now; a unique constraint it breaks (a name taken, a
    rule made by a concurrent request) raises ``conflict``. The request's transaction
    is rolled back as the error leaves it."""
    try:
        session.flush()
    except IntegrityError:
        raise conflict from None


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


def engine_for(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":  # SQLite checks foreign keys only when asked

        @event.listens_for(engine, "connect")
        def enforce_foreign_keys(connection: object, _record: object) -> None:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

    return engine


def sessions(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(engine, expire_on_commit=False)
