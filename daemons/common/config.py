"""One TOML file per host (``/etc/mallee/mallee.conf``), one section per component.

Every key has a default here and a comment in ``etc/mallee.conf.example``; a test keeps
the two in step. Unknown keys and wrongly typed values are errors naming the key, so a
typo in the file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_PATH = Path("/etc/mallee/mallee.conf")
PATH_ENV = "MALLEE_CONFIG"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CommonConfig:
    log_level: str = "INFO"
    # Mutual TLS between components; false only for loopback development and tests.
    tls: bool = True
    ca_cert: str = "/etc/mallee/tls/ca.pem"


@dataclass(frozen=True)
class NcConfig:
    listen: str = "0.0.0.0"
    port: int = 8775
    threads: int = 16
    tls_cert: str = "/etc/mallee/tls/nc.pem"
    tls_key: str = "/etc/mallee/tls/nc.key"
    allowed_clients: list[str] = field(default_factory=lambda: ["cc"])
    node_name: str = field(default_factory=socket.gethostname)
    libvirt_uri: str = "qemu:///system"
    hypervisor: str = "auto"
    instance_dir: str = "/var/lib/mallee/nc/instances"
    image_cache_dir: str = "/var/lib/mallee/nc/images"
    image_cache_mb: int = 20480
    image_fetch_timeout_s: int = 600
    cpu_overcommit: float = 1.0
    max_cores: int = 0
    max_memory_mb: int = 0
    max_disk_gb: int = 0
    reserved_memory_mb: int = 512
    swap_mb: int = 512
    kernel_cmdline: str = ""
    public_bridge: str = ""
    private_bridge_prefix: str = "mlvlan"
    monitor_interval_s: float = 5.0
    terminated_retention_s: int = 3600
    console_max_bytes: int = 65536


@dataclass(frozen=True)
class CcConfig:
    listen: str = "0.0.0.0"
    port: int = 8774
    threads: int = 32
    tls_cert: str = "/etc/mallee/tls/cc.pem"
    tls_key: str = "/etc/mallee/tls/cc.key"
    allowed_clients: list[str] = field(default_factory=lambda: ["clc", "admin"])
    state_dir: str = "/var/lib/mallee/cc"
    scheduler: str = "first-fit"
    poll_interval_s: float = 5.0
    poll_timeout_s: float = 3.0
    poll_workers: int = 32
    down_after_s: float = 15.0
    run_timeout_s: float = 600.0
    dispatch_workers: int = 16


SECTIONS: dict[str, type[Any]] = {"common": CommonConfig, "nc": NcConfig, "cc": CcConfig}

C = TypeVar("C")


def config_path() -> Path:
    return Path(os.environ.get(PATH_ENV, DEFAULT_PATH))


def read_file(path: Path | None = None) -> dict[str, Any]:
    """The parsed file, or an empty dict when it does not exist (defaults everywhere)."""
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = set(data) - set(SECTIONS) - {"clc", "vde"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    return data


def section(cls: type[C], values: Mapping[str, Any], where: str) -> C:
    """Build a section dataclass from ``values``, checking names and types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {sorted(unknown)}")
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"[{where}] {key}: expected {hints[key]}, got {value!r}")
    return cls(**values)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is types.UnionType:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def load(
    component: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[CommonConfig, Any]:
    """Defaults, then the host's file, then ``overrides`` (tests), for ``component``."""
    data = read_file()
    overrides = overrides or {}
    sections = []
    for name in ("common", component):
        merged = {**data.get(name, {}), **overrides.get(name, {})}
        sections.append(section(SECTIONS[name], merged, name))
    return sections[0], sections[1]
