"""describeResource: what this host offers to instances, and what is left.

Maximums come from the host (psutil), capped by the admin's ``max_*`` settings; cores
are multiplied by ``cpu_overcommit`` first (vCPUs per host core), memory leaves
``reserved_memory_mb`` to the host. Available is maximum minus what admitted
instances were promised (their instance type), not what they happen to touch now:
a scheduler must not place on memory a running guest has merely not used yet.
Disk available is also never more than the file system really has free.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

import psutil

from mallee.common.capacity import Capacity, VmType
from mallee.nc.config import NcConfig
from mallee.nc.disks import GiB, MiB


def _cap(measured: int, limit: int) -> int:
    return min(measured, limit) if limit > 0 else measured


def capacity(config: NcConfig, committed: Iterable[VmType]) -> tuple[Capacity, Capacity]:
    """This node's (maximum, available) given the instance types already admitted."""
    memory = psutil.virtual_memory().total // MiB - config.reserved_memory_mb
    disk = shutil.disk_usage(config.instance_dir)
    most = Capacity(
        cores=_cap(int((psutil.cpu_count() or 1) * config.cpu_overcommit), config.max_cores),
        memory_mb=_cap(max(memory, 0), config.max_memory_mb),
        disk_gb=_cap(disk.total // GiB, config.max_disk_gb),
    )
    vms = list(committed)
    left = Capacity(
        cores=most.cores - sum(v.cores for v in vms),
        memory_mb=most.memory_mb - sum(v.memory_mb for v in vms),
        disk_gb=min(most.disk_gb - sum(v.disk_gb for v in vms), disk.free // GiB),
    )
    return most, left


def describe(most: Capacity, left: Capacity, instances: int) -> dict[str, int]:
    return {
        "cores_max": most.cores,
        "cores_available": left.cores,
        "memory_mb_max": most.memory_mb,
        "memory_mb_available": left.memory_mb,
        "disk_gb_max": most.disk_gb,
        "disk_gb_available": left.disk_gb,
        "instances": instances,
    }
