"""The CC as its instances' router on the public interface (public_mode managed or
static): an nftables table of its own that redirects 169.254.169.254:80 to the CLC's
metadata service, keeping the instance's source address so the CLC can tell which
instance asks (seed §2.2; Eucalyptus' and neutron's way).

The table is replaced whole in one transaction at start (so a restart after ``kill -9``
finds it as it must be) and removed when the CC stops.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from mallee.common import nftables
from mallee.common.config import ConfigError
from mallee.common.nftables import field, match, meta

logger = logging.getLogger(__name__)

METADATA_IP = "169.254.169.254"
FAMILY = "ip"


def metadata_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of the CLC's metadata service, as instances' packets can reach it."""
    host, sep, port = text.rpartition(":")
    try:
        address = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if not sep or address is None or not 0 < number < 65536:
        raise ConfigError(
            f"[cc] metadata_address: {text!r} is not ADDRESS:PORT (an IPv4 address and the"
            " CLC's metadata_port)"
        )
    if address.is_loopback:
        raise ConfigError(
            f"[cc] metadata_address: {address} is a loopback address, which instances'"
            " packets cannot be sent to; give the CLC host's address on a network this host"
            " reaches"
        )
    return str(address), number


class Router:
    def __init__(self, interface: str, metadata: tuple[str, int] | None) -> None:
        self.interface = interface
        self.metadata = metadata
        self.table = nftables.table_name("cc", interface)

    def start(self) -> None:
        table = {"family": FAMILY, "table": self.table}
        nat = {"type": "nat", "hook": "prerouting", "prio": -100}  # dstnat
        rules: list[nftables.Command] = [{"add": {"chain": {**table, "name": "prerouting", **nat}}}]
        if self.metadata is not None:
            address, port = self.metadata
            redirect = [
                match(meta("iifname"), self.interface),
                match(field("ip", "daddr"), METADATA_IP),
                match(field("tcp", "dport"), 80),
                {"dnat": {"addr": address, "port": port}},
            ]
            rules.append({"add": {"rule": {**table, "chain": "prerouting", "expr": redirect}}})
            if not _forwards(self.interface):
                logger.warning(
                    "%s does not forward IPv4: instances reach the metadata service only if"
                    " it runs on this host (sysctl net.ipv4.conf.%s.forwarding=1)",
                    self.interface,
                    self.interface,
                )
        nftables.apply(nftables.replace_table(FAMILY, self.table, rules))

    def stop(self) -> None:
        nftables.apply(nftables.remove_table(FAMILY, self.table))


def _forwards(interface: str) -> bool:
    path = Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding")
    return path.exists() and path.read_text().strip() == "1"
