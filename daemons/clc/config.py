"""The ``[clc]`` section of the host's config file; ``etc/mallee.conf.example`` says what
each key does."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import ClassVar

from mallee.common.capacity import VmType
from mallee.common.config import DaemonConfig


@dataclass(frozen=True, kw_only=True)
class ClcConfig(DaemonConfig):
    section_name: ClassVar[str] = "clc"

    port: int = 8773
    threads: int = 32
    tls_cert: str = "/etc/mallee/tls/clc.pem"
    tls_key: str = "/etc/mallee/tls/clc.key"
    # EC2 callers are users, not components: they prove who they are by signatures.
    allowed_clients: list[str] = field(default_factory=lambda: ["admin"])
    database_url: str = "sqlite:////var/lib/mallee/clc/clc.db"
    region: str = "mallee"
    accept_signature_v2: bool = False
    # "NAME CORES MEMORY_MB DISK_GB" each; Eucalyptus' five by default.
    instance_types: list[str] = field(
        default_factory=lambda: [
            "m1.small 1 128 2",
            "c1.medium 1 256 5",
            "m1.large 2 512 10",
            "m1.xlarge 2 1024 20",
            "c1.xlarge 4 2048 20",
        ]
    )
    # How long a call to a CC may take before the CLC gives up on it.
    cc_timeout_s: float = 10.0
    # How often each CC is asked for its instances and room (its report is ground
    # truth), and after how many polls not listing an instance it once took, that
    # instance is ended as lost.
    poll_interval_s: float = 5.0
    lost_after_polls: int = 3
    # How long terminated instances stay in DescribeInstances (EC2: about an hour).
    terminated_visible_s: float = 3600.0
    # The image store (files named by digest).
    image_dir: str = "/var/lib/mallee/clc/images"
    # This CLC's URL as users and NCs reach it ("" for https://<this host's FQDN>:<port>):
    # NCs fetch images there, and users' credentials name it.
    url: str = ""
    # The SLA chain, in order (module:function each; see mallee.clc.sla), and the
    # shipped policies' settings: live instances per user (0: no quota), and the
    # lease after which instances are terminated (0: none).
    sla_policies: list[str] = field(
        default_factory=lambda: [
            "mallee.clc.sla:quota",
            "mallee.clc.sla:placement",
            "mallee.clc.sla:lease",
        ]
    )
    instance_quota: int = 4
    # The instances' private addresses, one per instance while it lives; its NIC's MAC
    # is d0:0d: and the address's four bytes (Eucalyptus' way), so DHCP can tell it.
    private_subnet: str = "172.31.0.0/16"
    # 0: no private overlay (each instance has one NIC, on its zone's public network,
    # with its private address). N: each security group's instances get a VLAN of the
    # overlay, and addresses of that VLAN's /N slice of private_subnet, on a NIC of
    # their own; the zones' CCs are set the same ([cc] private_slice_prefix).
    private_slice_prefix: int = 0
    # The site's public addresses users may allocate (AllocateAddress), as CIDRs or
    # FIRST-LAST ranges; none by default.
    public_addresses: list[str] = field(default_factory=list)
    # The metadata service (plain HTTP, as guests ask it), where the clusters' redirect
    # of 169.254.169.254:80 sends guests' requests with their source address kept, or
    # a CC's metadata proxy asks for them.
    metadata_port: int = 8779
    # Shared with the CCs whose metadata proxy asks for their instances (the CLC on
    # another host than theirs); empty: no proxy is believed.
    metadata_proxy_secret: str = ""
    lease_hours: float = 6.0

    def public_url(self, tls: bool) -> str:
        scheme = "https" if tls else "http"
        return (self.url or f"{scheme}://{socket.getfqdn()}:{self.port}").rstrip("/")

    def catalog(self) -> list[VmType]:
        """The instance types users may run, in the order the admin gave."""
        types = []
        for entry in self.instance_types:
            try:
                name, cores, memory_mb, disk_gb = entry.split()
                types.append(VmType(name, int(cores), int(memory_mb), int(disk_gb)))
            except ValueError:
                raise ValueError(
                    f"[clc] instance_types: {entry!r} is not 'NAME CORES MEMORY_MB DISK_GB'"
                ) from None
        return types
