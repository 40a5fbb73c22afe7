"""One TOML file per host (``/etc/mallee/mallee.conf``), one section per component.

This module holds the loader, ``[common]`` and the keys every daemon's section shares
(``DaemonConfig``); each daemon defines its own section beside its code
(``mallee.nc.config``, ``mallee.cc.config``) and passes it to ``load``. Every key has a
default there and a comment in ``etc/mallee.conf.example``; a test keeps the two in
step. Unknown keys and wrongly typed values are errors naming the key, so a typo in the
file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DEFAULT_PATH = Path("/etc/mallee/mallee.conf")
PATH_ENV = "MALLEE_CONFIG"
# Sections a host's file may hold: one host runs several components, and each daemon
# reads only its own section and [common].
SECTION_NAMES = frozenset({"common", "nc", "cc", "clc", "vde"})


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CommonConfig:
    section_name: ClassVar[str] = "common"

    log_level: str = "INFO"
    # Mutual TLS between components; false only for loopback development and tests.
    tls: bool = True
    ca_cert: str = "/etc/mallee/tls/ca.pem"


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """The keys of every daemon's section: where it listens, how many calls it serves at
    once, its certificate, and the roles that may call its API. Each daemon's section
    extends this and gives the defaults without one here."""

    section_name: ClassVar[str]

    listen: str = "0.0.0.0"
    port: int
    threads: int
    tls_cert: str
    tls_key: str
    allowed_clients: list[str]

    def ports(self) -> list[int]:
        """Every port the daemon listens on (on ``listen``). A daemon serving several
        (the CLC: EC2 API and admin console) adds its others here."""
        return [self.port]


Section = TypeVar("Section")
Daemon = TypeVar("Daemon", bound=DaemonConfig)


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
    unknown = set(data) - SECTION_NAMES
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    return data


def section(cls: type[Section], values: Mapping[str, Any], where: str) -> Section:
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
    daemon: type[Daemon], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[CommonConfig, Daemon]:
    """``[common]`` and the daemon's section: defaults, then the host's file, then
    ``overrides`` (tests), which map section names to keys as the file does."""
    data = read_file()
    overrides = overrides or {}

    def merged(name: str) -> dict[str, Any]:
        return {**data.get(name, {}), **overrides.get(name, {})}

    common = section(CommonConfig, merged("common"), "common")
    name = daemon.section_name
    return common, section(daemon, merged(name), name)
