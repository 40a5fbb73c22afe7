"""The cloud's users and their access keys: who may sign requests, and who is an admin.

An access key id looks like EC2's (``AKIA`` + 16 upper-case letters and digits); its
secret is 40 characters. Keys of a disabled user sign nothing.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mallee.clc.db import AccessKey, Instance, User
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


def create_user(
    db: Session, name: str, admin: bool = False, given: tuple[str, str] | None = None
) -> Credentials:
    if not USER_NAME.fullmatch(name):
        raise ValueError(
            f"user name {name!r}: lower-case letters, digits, '_', '.', '-', "
            "starting with a letter, at most 64"
        )
    if db.get(User, name) is not None:
        raise ValueError(f"user {name!r} already exists")
    db.add(User(name=name, admin=admin))
    db.flush()
    return add_access_key(db, name, given)


GIVEN_KEY_ID = re.compile(r"[A-Z0-9]{16,32}")
GIVEN_SECRET = re.compile(r"[A-Za-z0-9/+=_-]{16,64}")


def add_access_key(db: Session, name: str, given: tuple[str, str] | None = None) -> Credentials:
    """A new key of the user's: generated, or ``given`` (id, secret) for a user who
    moves from another cloud with their keys."""
    if db.get(User, name) is None:
        raise ValueError(f"no user {name!r}")
    if given is not None:
        key_id, secret = given
        if not GIVEN_KEY_ID.fullmatch(key_id) or not GIVEN_SECRET.fullmatch(secret):
            raise ValueError(
                "a given access key id is 16 to 32 upper-case letters and digits, its "
                "secret 16 to 64 letters, digits and /+=_-"
            )
        if db.get(AccessKey, key_id) is not None:
            raise ValueError(f"the access key {key_id} exists already")
    else:
        key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = secrets.token_urlsafe(30)  # 40 characters
    db.add(AccessKey(access_key_id=key_id, secret=secret, user_name=name))
    return Credentials(name, key_id, secret)


def rotate_keys(db: Session, name: str) -> Credentials:
    """A new key; the user's older keys sign nothing from now on."""
    db.execute(delete(AccessKey).where(AccessKey.user_name == name))
    return add_access_key(db, name)


def remove_user(db: Session, name: str) -> None:
    """The user and everything of theirs; refused while they have instances not ended."""
    user = db.get(User, name)
    if user is None:
        raise ValueError(f"no user {name!r}")
    live = select(Instance.instance_id).where(
        Instance.owner == name, Instance.state != "terminated"
    )
    if ids := list(db.scalars(live)):
        raise ValueError(
            f"user {name!r} has {len(ids)} instance(s) not ended: "
            f"mallee-admin instance terminate {' '.join(ids)}"
        )
    db.delete(user)


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
