"""The ``[clc]`` section of the host's config file; ``etc/mallee.conf.example`` says what
each key does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

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
