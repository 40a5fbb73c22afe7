from pathlib import Path

import psutil

from mallee.common.capacity import Capacity, VmType
from mallee.common.config import NcConfig
from mallee.nc import resources


def maximum(config: NcConfig) -> Capacity:
    return resources.capacity(config, [])[0]


def test_caps_apply(tmp_path: Path) -> None:
    config = NcConfig(instance_dir=str(tmp_path), max_cores=1, max_memory_mb=1024, max_disk_gb=5)
    assert maximum(config) == Capacity(1, 1024, 5)


def test_cpu_overcommit_then_cap(tmp_path: Path) -> None:
    cores = psutil.cpu_count()
    config = NcConfig(instance_dir=str(tmp_path), cpu_overcommit=4.0)
    assert maximum(config).cores == 4 * cores
    capped = NcConfig(instance_dir=str(tmp_path), cpu_overcommit=4.0, max_cores=cores + 1)
    assert maximum(capped).cores == cores + 1


def test_uncapped_is_the_host_less_reserve(tmp_path: Path) -> None:
    config = NcConfig(instance_dir=str(tmp_path), reserved_memory_mb=100)
    most = maximum(config)
    assert most.cores == psutil.cpu_count()
    assert most.memory_mb == psutil.virtual_memory().total // (1 << 20) - 100


def test_available_is_maximum_minus_promised(tmp_path: Path) -> None:
    config = NcConfig(
        instance_dir=str(tmp_path),
        cpu_overcommit=8.0,
        max_cores=8,
        max_memory_mb=8192,
        max_disk_gb=10,
    )
    small, big = VmType("s", 1, 512, 2), VmType("b", 4, 4096, 5)
    most, left = resources.capacity(config, [small, big])
    assert most == Capacity(8, 8192, 10)
    assert (left.cores, left.memory_mb) == (3, 3584)
    assert left.disk_gb == min(3, resources.capacity(config, [])[1].disk_gb)
    assert left.fits(VmType("x", 3, 3584, left.disk_gb))
    assert not left.fits(VmType("x", 4, 512, 1))
    assert not left.fits(VmType("x", 1, 4000, 1))


def test_describe_names() -> None:
    view = resources.describe(Capacity(4, 100, 9), Capacity(3, 50, 8), 1)
    assert view == {
        "cores_max": 4,
        "cores_available": 3,
        "memory_mb_max": 100,
        "memory_mb_available": 50,
        "disk_gb_max": 9,
        "disk_gb_available": 8,
        "instances": 1,
    }
