"""The ``[cc]`` section of the host's config file; ``etc/mallee.conf.example`` says what
each key does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mallee.common.config import DaemonConfig


@dataclass(frozen=True, kw_only=True)
class CcConfig(DaemonConfig):
    section_name: ClassVar[str] = "cc"

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
    # The instances' public NICs (seed §2.2): "system", "managed" or "static"; see
    # etc/mallee.conf.example.
    public_mode: str = "system"
    public_interface: str = ""
    public_pool: str = ""
    public_table: list[str] = field(default_factory=list)
    public_dns: list[str] = field(default_factory=list)
    metadata_address: str = ""
    # The metadata proxy for the VLANs' instances when metadata_address is on another
    # host: the port it serves on here, and the secret it shares with the CLC.
    metadata_proxy_port: int = 8780
    metadata_proxy_secret: str = ""
    # The private overlay (etc/mallee.conf.example): this CC routes and serves DHCP on
    # each VLAN its nodes carry, its slice of private_subnet (the CLC's).
    overlay: str = ""
    overlay_address: str = ""
    private_subnet: str = ""
    private_slice_prefix: int = 24
    # The other clusters' CCs this one joins its VLANs to (peering.py), and its own
    # address on the network the head nodes share.
    overlay_peers: list[str] = field(default_factory=list)
    overlay_peer_address: str = ""
