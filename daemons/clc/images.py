"""Images: the files of the CLC's image store and the records that register them.

The store is one folder of files named by their sha256, put there by ``mallee-admin``
and served to NCs (over mutual TLS, with their digests) by the CLC. A record makes a
stored file an image: a machine image (``emi-``) booting from its own disk, or with a
kernel (``eki-``) and an optional ramdisk (``eri-``) that are images of their own. The
cloud's images (owner "mallee", added by ``mallee-admin``) are public unless made
private; users see public images that are available, and their own.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mallee.clc.db import Image
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error

CLOUD_OWNER = "mallee"
PREFIXES = {"machine": "emi", "kernel": "eki", "ramdisk": "eri"}
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
QCOW2_MAGIC = b"QFI\xfb"
CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    digest: str  # sha256:HEX
    size: int
    disk_format: str  # raw or qcow2


class ImageStore:
    """Files named by their content's sha256: the same file added twice is kept once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, source: Path) -> StoredFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        part = self.directory / f".{os.getpid()}.part"
        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as src, part.open("wb") as out:
            head = src.read(len(QCOW2_MAGIC))
            src.seek(0)
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        part.chmod(0o644)
        part.rename(self.directory / digest.hexdigest())
        disk_format = "qcow2" if head == QCOW2_MAGIC else "raw"
        return StoredFile(f"sha256:{digest.hexdigest()}", size, disk_format)

    def path_of(self, digest: str) -> Path | None:
        """The stored file of ``digest`` (sha256:HEX), or None."""
        match = DIGEST.fullmatch(digest)
        if match is None:
            return None
        path = self.directory / match.group(1)
        return path if path.is_file() else None

    def stat(self, digest: str) -> StoredFile | None:
        path = self.path_of(digest)
        if path is None:
            return None
        with path.open("rb") as f:
            head = f.read(len(QCOW2_MAGIC))
        return StoredFile(digest, path.stat().st_size, "qcow2" if head == QCOW2_MAGIC else "raw")

    def remove(self, digest: str) -> None:
        if (path := self.path_of(digest)) is not None:
            path.unlink()


def register(
    db: Session,
    owner: str,
    kind: str,
    name: str,
    stored: StoredFile,
    *,
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    public: bool = False,
    description: str = "",
) -> Image:
    if not 3 <= len(name) <= 128:
        raise Ec2Error("InvalidParameterValue", "An image's name is 3 to 128 characters")
    if kind != "machine" and (kernel_id or ramdisk_id):
        raise Ec2Error("InvalidParameterValue", f"A {kind} image names no kernel or ramdisk")
    if ramdisk_id and not kernel_id:
        raise Ec2Error("InvalidParameterValue", "A ramdisk needs a kernel")
    for wanted, kind_of in ((kernel_id, "kernel"), (ramdisk_id, "ramdisk")):
        if wanted:
            found = db.get(Image, wanted)
            if found is None or found.kind != kind_of:
                raise Ec2Error("InvalidAMIID.NotFound", f"The {kind_of} '{wanted}' does not exist")
    image = Image(
        image_id=f"{PREFIXES[kind]}-{secrets.token_hex(9)[:17]}",
        owner=owner,
        kind=kind,
        name=name,
        description=description,
        digest=stored.digest,
        size=stored.size,
        disk_format=stored.disk_format,
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
        public=public,
    )
    db.add(image)
    db.flush()
    return image


def _visible(caller: Caller) -> Any:
    if caller.admin:
        return True
    return or_(Image.owner == caller.user, (Image.public) & (Image.state == "available"))


def describe(db: Session, caller: Caller, image_ids: list[str], owners: list[str]) -> list[Image]:
    """The images the caller may see; named ones must all be among them."""
    query = select(Image).where(_visible(caller)).order_by(Image.image_id)
    if image_ids:
        query = query.where(Image.image_id.in_(image_ids))
    if owners:
        wanted = {caller.user if o == "self" else o for o in owners}
        query = query.where(Image.owner.in_(wanted))
    found = list(db.scalars(query))
    if missing := sorted(set(image_ids) - {i.image_id for i in found}):
        raise Ec2Error("InvalidAMIID.NotFound", f"The image id '[{missing[0]}]' does not exist")
    return found


def find(db: Session, caller: Caller, image_id: str) -> Image:
    return describe(db, caller, [image_id], [])[0]


def launchable(db: Session, caller: Caller, image_id: str, kind: str) -> Image:
    """An image of ``kind`` the caller may launch: visible, enabled, of that kind."""
    image = db.get(Image, image_id)
    visible = image is not None and (caller.admin or image.owner == caller.user or image.public)
    if image is None or not visible or image.kind != kind:
        raise Ec2Error("InvalidAMIID.NotFound", f"The {kind} image '{image_id}' does not exist")
    if image.state != "available":
        raise Ec2Error("InvalidAMIID.Unavailable", f"The image '{image_id}' is {image.state}")
    return image


def deregister(db: Session, caller: Caller, image_id: str) -> None:
    image = find(db, caller, image_id)
    if image.owner != caller.user and not caller.admin:
        raise Ec2Error(
            "UnauthorizedOperation", f"The image '{image_id}' is not yours to deregister", 403
        )
    db.delete(image)


def set_state(db: Session, image_id: str, state: str) -> None:
    image = db.get(Image, image_id)
    if image is None:
        raise ValueError(f"no image {image_id!r}")
    image.state = state


def served(db: Session, digest: str) -> bool:
    """Whether ``digest`` is a registered image's file: NCs may fetch it, and the store
    keeps it."""
    return db.scalar(select(Image.image_id).where(Image.digest == digest).limit(1)) is not None


def creation_date(image: Image) -> str:
    """EC2 gives an image's creation time as text."""
    created = image.created_at
    if created.tzinfo is None:  # SQLite hands back naive datetimes (UTC)
        created = created.replace(tzinfo=UTC)
    return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ref(image: Image, base_url: str) -> dict[str, str]:
    """The image as NCs fetch it (the CC's ImageRef)."""
    hex_digest = image.digest.removeprefix("sha256:")
    return {
        "id": image.image_id,
        "url": f"{base_url}/v1/images/sha256/{hex_digest}",
        "digest": image.digest,
        "format": image.disk_format,
    }
