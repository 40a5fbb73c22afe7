"""Per-instance folders: the record that lets an NC recover after a restart, and the disks.

``<instance_dir>/<instance-id>/`` holds ``instance.json``, the disks, ``domain.xml`` (for
the admin's eyes) and ``console.log``. The record is written before anything is made for
the instance, and replaced atomically, so a crash at any point leaves either a record to
act on or nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from mallee.nc.model import Instance

logger = logging.getLogger(__name__)

RECORD = "instance.json"


class InstanceStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # QEMU, as its own user, opens the disks inside

    def directory(self, instance_id: str) -> Path:
        return self.root / instance_id

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

    def load_all(self) -> tuple[list[Instance], list[str], list[str]]:
        """(readable records, folders without a record, folders whose record is unreadable).

        Only a folder without any record is a leftover to clean up. An unreadable record
        (an I/O error, a record of another version) is left alone with its domain: the
        admin decides, the NC does not destroy what it cannot read."""
        instances, strays, unreadable = [], [], []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
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
