"""The ``[nc]`` section of the host's config file; ``etc/mallee.conf.example`` says what
each key does."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import ClassVar

from mallee.common.config import DaemonConfig


@dataclass(frozen=True, kw_only=True)
class NcConfig(DaemonConfig):
    section_name: ClassVar[str] = "nc"

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
    launch_workers: int = 4
    cpu_overcommit: float = 1.0
    max_cores: int = 0
    max_memory_mb: int = 0
    max_disk_gb: int = 0
    reserved_memory_mb: int = 512
    swap_mb: int = 512
    kernel_cmdline: str = ""
    public_bridge: str = ""
    private_bridge_prefix: str = "mlvlan"
    # The private overlay (etc/mallee.conf.example): "" (none: a VLAN's bridge reaches
    # this host's instances only), "vxlan" or "vde", at this host's overlay_address.
    overlay: str = ""
    overlay_address: str = ""
    monitor_interval_s: float = 5.0
    terminated_retention_s: int = 3600
    console_max_bytes: int = 65536
