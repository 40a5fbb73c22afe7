"""describeResource on a fake host of known size, so every expected figure is worked out
by hand below rather than from psutil: 4 cores, 16 GiB of memory, and an instance file
system of 100 GiB with 40 GiB free."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from mallee.common.capacity import Capacity, VmType
from mallee.common.openapi import OpenApiSpec
from mallee.nc import resources
from mallee.nc.client import NcResource
from mallee.nc.config import NcConfig

GIB = 1 << 30
SMALL, BIG = VmType("s", 1, 512, 2), VmType("b", 4, 4096, 5)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    """The fake host; change ``cores``, ``memory``, ``disk_total`` or ``disk_free`` in a
    test. Only the instance folder's file system may be measured."""
    fake = SimpleNamespace(
        instance_dir=tmp_path, cores=4, memory=16 * GIB, disk_total=100 * GIB, disk_free=40 * GIB
    )

    def disk_usage(path: str) -> SimpleNamespace:
        assert Path(path) == fake.instance_dir, f"measured {path}, not the instance folder"
        return SimpleNamespace(total=fake.disk_total, used=0, free=fake.disk_free)

    monkeypatch.setattr(psutil, "cpu_count", lambda: fake.cores)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=fake.memory))
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return fake


def config(host: SimpleNamespace, **settings: object) -> NcConfig:
    return NcConfig(instance_dir=str(host.instance_dir), **settings)  # type: ignore[arg-type]


def test_uncapped_is_the_host_less_reserve(host: SimpleNamespace) -> None:
    most, left = resources.capacity(config(host, reserved_memory_mb=100), [])
    # 4 cores x overcommit 1; 16384 MiB - 100 reserved; 100 GiB file system
    assert most == Capacity(4, 16284, 100)
    # nothing admitted, but only 40 GiB of the disk are really free
    assert left == Capacity(4, 16284, 40)


def test_caps_apply(host: SimpleNamespace) -> None:
    settings = {"max_cores": 1, "max_memory_mb": 1024, "max_disk_gb": 5}
    assert resources.capacity(config(host, **settings), [])[0] == Capacity(1, 1024, 5)


def test_caps_above_the_host_do_not_add(host: SimpleNamespace) -> None:
    settings = {"max_cores": 64, "max_memory_mb": 1 << 20, "max_disk_gb": 1000}
    # the host's own 4 cores, 16384 - 512 (default reserve) MiB, 100 GiB
    assert resources.capacity(config(host, **settings), [])[0] == Capacity(4, 15872, 100)


def test_cpu_overcommit_then_cap(host: SimpleNamespace) -> None:
    assert resources.capacity(config(host, cpu_overcommit=4.0), [])[0].cores == 16  # 4 x 4
    capped = config(host, cpu_overcommit=4.0, max_cores=10)
    assert resources.capacity(capped, [])[0].cores == 10  # 16, capped at 10
    host.cores = 3
    assert resources.capacity(config(host, cpu_overcommit=1.5), [])[0].cores == 4  # 4.5 down


def test_unknown_core_count_counts_as_one(host: SimpleNamespace) -> None:
    host.cores = None  # psutil.cpu_count() when it cannot tell
    assert resources.capacity(config(host, cpu_overcommit=2.0), [])[0].cores == 2  # 1 x 2


def test_reserve_larger_than_memory_offers_none(host: SimpleNamespace) -> None:
    host.memory = 1 * GIB  # 1024 MiB, all of it and more reserved
    most, left = resources.capacity(config(host, reserved_memory_mb=2048), [])
    assert most.memory_mb == 0
    assert not left.fits(VmType("tiny", 1, 16, 1))


def test_available_is_maximum_minus_promised(host: SimpleNamespace) -> None:
    host.disk_free = 95 * GIB  # the file system has room: the promises decide
    settings = {"cpu_overcommit": 2.0, "max_memory_mb": 8192}
    most, left = resources.capacity(config(host, **settings), [SMALL, BIG])
    assert most == Capacity(8, 8192, 100)
    # 8 - 1 - 4 cores, 8192 - 512 - 4096 MiB, 100 - 2 - 5 GiB
    assert left == Capacity(3, 3584, 93)
    assert left.fits(VmType("x", 3, 3584, 93))
    assert not left.fits(VmType("x", 4, 512, 1))
    assert not left.fits(VmType("x", 1, 4000, 1))


def test_disk_available_is_never_more_than_really_free(host: SimpleNamespace) -> None:
    host.disk_free = 40 * GIB + GIB // 2  # 40.5 GiB: only whole GiB count
    most, left = resources.capacity(config(host), [SMALL, BIG])
    assert most.disk_gb == 100
    assert left.disk_gb == 40  # not 100 - 7 = 93: the file system has 40 GiB free
    assert not left.fits(VmType("x", 1, 512, 41))


def test_the_cc_reads_back_what_the_nc_describes() -> None:
    """The answer is valid against the NC's Resource schema and the CC's client recovers
    every figure from it (all distinct, so a swapped or misnamed field shows)."""
    most, left = Capacity(4, 100, 9), Capacity(3, 50, 8)
    answer = {
        **resources.describe(most, left, 1),
        "hypervisor_reachable": True,
        "hypervisor_error": "",
        "overlay_address": "10.9.0.1",
    }
    OpenApiSpec(Path(resources.__file__).with_name("openapi.yaml")).validate("Resource", answer)
    read = NcResource.from_api(answer)
    assert (read.maximum, read.available, read.instances) == (most, left, 1)
    assert read.overlay_address == "10.9.0.1"
