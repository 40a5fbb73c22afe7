"""The CC as its instances' router on the public interface (public_mode managed or
static): an nftables table of its own that

- redirects 169.254.169.254:80 to the CLC's metadata service, keeping the instance's
  source address so the CLC can tell which instance asks (seed §2.2);
- translates elastic addresses: what arrives from elsewhere for one goes to its
  instance (DNAT), and what the instance sends elsewhere leaves from it (SNAT), as
  Eucalyptus and neutron's floating IPs do. The site routes the elastic addresses to
  this host; the CC adds no address to any interface.

The table is replaced whole, in one transaction, at start (so a restart after
``kill -9`` finds it as it must be) and at every change of the translations; it is
removed when the CC stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from pathlib import Path

from pyroute2 import NetlinkError
from pyroute2.conntrack import Conntrack, NFCTAttrTuple

from mallee.common import nftables
from mallee.common.config import ConfigError
from mallee.common.nftables import Expr, field, match, meta

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

    def apply(self, elastic: dict[str, str]) -> None:
        """The table as it must be, translating each elastic address of ``elastic`` to
        and from its instance's address."""
        table = {"family": FAMILY, "table": self.table}
        dstnat = {"type": "nat", "hook": "prerouting", "prio": -100}
        srcnat = {"type": "nat", "hook": "postrouting", "prio": 100}
        rules: list[nftables.Command] = [
            {"add": {"chain": {**table, "name": "prerouting", **dstnat}}},
            {"add": {"chain": {**table, "name": "postrouting", **srcnat}}},
        ]

        def rule(chain: str, *expr: Expr) -> nftables.Command:
            return {"add": {"rule": {**table, "chain": chain, "expr": list(expr)}}}

        elsewhere = match(meta("iifname"), self.interface, "!=")
        # the metadata service must see the instance's own address, elastic or not
        not_metadata = match({"ct": {"key": "ip daddr", "dir": "original"}}, METADATA_IP, "!=")
        for public_ip, address in sorted(elastic.items()):
            rules.append(
                rule("prerouting", elsewhere, match(field("ip", "daddr"), public_ip),
                     {"dnat": {"addr": address}})
            )  # fmt: skip
            rules.append(
                rule("postrouting", match(meta("oifname"), self.interface, "!="),
                     match(field("ip", "saddr"), address), not_metadata,
                     {"snat": {"addr": public_ip}})
            )  # fmt: skip
        if self.metadata is not None:
            address, port = self.metadata
            rules.append(
                rule("prerouting", match(meta("iifname"), self.interface),
                     match(field("ip", "daddr"), METADATA_IP), match(field("tcp", "dport"), 80),
                     {"dnat": {"addr": address, "port": port}})
            )  # fmt: skip
        nftables.apply(nftables.replace_table(FAMILY, self.table, rules))

    def check(self) -> None:
        """Say at start what keeps instances from reaching past this host."""
        if not _forwards(self.interface):
            logger.warning(
                "%s does not forward IPv4: instances reach only this host (the metadata"
                " service if it runs here) and elastic addresses reach no instance; set"
                " sysctl net.ipv4.conf.%s.forwarding=1 and the same on the uplink",
                self.interface,
                self.interface,
            )

    @staticmethod
    def cut_flows(public_ip: str) -> None:
        """End the connections translated for ``public_ip``: conntrack would otherwise
        keep translating the flows it holds after the rules changed."""
        with Conntrack() as conntrack:
            for found in (
                list(conntrack.dump_entries(tuple_orig=NFCTAttrTuple(daddr=public_ip))),
                list(conntrack.dump_entries(tuple_reply=NFCTAttrTuple(daddr=public_ip))),
            ):
                for entry in found:
                    with contextlib.suppress(NetlinkError):  # ended meanwhile
                        conntrack.delete(entry)

    def stop(self) -> None:
        nftables.apply(nftables.remove_table(FAMILY, self.table))


def _forwards(interface: str) -> bool:
    path = Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding")
    return path.exists() and path.read_text().strip() == "1"
