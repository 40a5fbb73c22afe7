"""Per-instance folders: the record that lets an NC recover after a restart, and the disks.

``<instance_dir>/<instance-id>/`` holds ``instance.json``, the disks, ``domain.xml`` (for
the admin's eyes) and ``console.log``. The record is written before anything is made for
the instance, and replaced atomically, so a crash at any point leaves either a record to
act on or nothing. A terminated instance keeps only its record, until the monitor
forgets it (``terminated_retention_s``), so it stays visible across a restart.

``<instance_dir>/.mallee-nc`` names the node that uses the folder: recovery destroys
domains without a record only in a folder it can prove is its own, never in one that
was changed or is not mounted. Only folders named like instance ids are ever removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from mallee.nc.model import Instance

logger = logging.getLogger(__name__)

RECORD = "instance.json"
MARKER = ".mallee-nc"
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8}([0-9a-f]{9})?$")


class InstanceStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # QEMU, as its own user, opens the disks inside

    def directory(self, instance_id: str) -> Path:
        if not INSTANCE_ID.match(instance_id):
            raise ValueError(f"{instance_id!r} is not an instance id")
        return self.root / instance_id

    def owner(self) -> str | None:
        """The node that has used this folder before (its marker); None if none has."""
        try:
            return (self.root / MARKER).read_text().strip()
        except FileNotFoundError:
            return None

    def mark(self, node: str) -> None:
        tmp = self.root / f"{MARKER}.tmp"
        tmp.write_text(node + "\n")
        tmp.rename(self.root / MARKER)

    def has_records(self) -> bool:
        return any((d / RECORD).exists() for d in self._instance_folders())

    def _instance_folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and INSTANCE_ID.match(p.name))

    def exists(self, instance_id: str) -> bool:
        return self.directory(instance_id).exists()

    def create(self, instance: Instance) -> None:
        """The instance's folder with its first record, or (on failure) no folder."""
        directory = self.directory(instance.instance_id)
        directory.mkdir(mode=0o755)
        try:
            self.save(instance)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def save(self, instance: Instance) -> None:
        path = self.directory(instance.instance_id) / RECORD
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(instance.to_record(), f)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)

    def remove(self, instance_id: str) -> None:
        """Remove the folder; already gone is fine, failing to remove it is an error."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory(instance_id))

    def retire(self, instance: Instance) -> None:
        """Keep only the (terminated) record: disks, console and domain XML go."""
        directory = self.directory(instance.instance_id)
        directory.mkdir(mode=0o755, exist_ok=True)
        for entry in directory.iterdir():
            if entry.name == RECORD:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.save(instance)

    def load_all(self) -> tuple[list[Instance], list[str], list[str]]:
        """(readable records, folders without a record, folders whose record is unreadable).

        Only a folder without any record is a leftover to clean up. An unreadable record
        (an I/O error, a record of another version) is left alone with its domain: the
        admin decides, the NC does not destroy what it cannot read."""
        instances, strays, unreadable = [], [], []
        for directory in self._instance_folders():
            record = directory / RECORD
            if not record.exists():
                strays.append(directory.name)
                continue
            try:
                instances.append(Instance.from_record(json.loads(record.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.error("%s: unreadable; leaving the instance alone (%s)", record, e)
                unreadable.append(directory.name)
        return instances, strays, unreadable
