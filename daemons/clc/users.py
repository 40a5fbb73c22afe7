"""The cloud's users and their access keys: who may sign requests, and who is an admin.

An access key id looks like EC2's (``AKIA`` + 16 upper-case letters and digits); its
secret is 40 characters. Keys of a disabled user sign nothing.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc.db import AccessKey, User
from mallee.clc.wire import Ec2Error

USER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Caller:
    """Who signed the request: resources are theirs; an admin sees everyone's."""

    user: str
    admin: bool


@dataclass(frozen=True)
class Credentials:
    user: str
    access_key_id: str
    secret_access_key: str


def create_user(db: Session, name: str, admin: bool = False) -> Credentials:
    if not USER_NAME.fullmatch(name):
        raise ValueError(
            f"user name {name!r}: lower-case letters, digits, '_', '.', '-', "
            "starting with a letter, at most 64"
        )
    if db.get(User, name) is not None:
        raise ValueError(f"user {name!r} already exists")
    db.add(User(name=name, admin=admin))
    db.flush()
    return add_access_key(db, name)


def add_access_key(db: Session, name: str) -> Credentials:
    if db.get(User, name) is None:
        raise ValueError(f"no user {name!r}")
    key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    secret = secrets.token_urlsafe(30)  # 40 characters
    db.add(AccessKey(access_key_id=key_id, secret=secret, user_name=name))
    return Credentials(name, key_id, secret)


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.name)))


def set_enabled(db: Session, name: str, enabled: bool) -> None:
    user = db.get(User, name)
    if user is None:
        raise ValueError(f"no user {name!r}")
    user.enabled = enabled


def secret_of(db: Session, access_key_id: str) -> str | None:
    """The secret of an enabled user's key; None for a key unknown or disabled."""
    key = db.get(AccessKey, access_key_id)
    if key is None:
        return None
    user = db.get(User, key.user_name)
    return key.secret if user is not None and user.enabled else None


def caller(db: Session, access_key_id: str) -> Caller:
    key = db.get(AccessKey, access_key_id)
    user = db.get(User, key.user_name) if key else None
    if user is None:  # removed between the signature check and now
        raise Ec2Error(
            "AuthFailure", "AWS was not able to validate the provided access credentials", 401
        )
    return Caller(user.name, user.admin)
