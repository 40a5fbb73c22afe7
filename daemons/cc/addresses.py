"""The public addresses a cluster gives its instances' public NICs (seed §2.2).

In SYSTEM mode the site's own DHCP serves them and the CC holds nothing. In MANAGED
mode the CC hands out addresses of a configured pool, each tied to the MAC of the
instance's public NIC; in STATIC mode it hands out whole (MAC, address) pairs of an
admin's table, the MAC replacing the one the CLC chose. Either way the CC's dnsmasq
serves exactly the pairs held here, so the lease an instance gets is the address the
CC reports.

A pair is held by one instance from its run until the CC sees it ended; the store is
a table of the CC's SQLite file, so a restart loses none and never gives one out twice.
The same file keeps the elastic addresses the CLC associated with the cluster's
instances, which the CC's router translates to and from the instances' addresses.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import netaddr

from mallee.cc import store
from mallee.common.config import ConfigError
from mallee.common.errors import InvalidParameter, MalleeError


class PublicMode(enum.StrEnum):
    SYSTEM = "system"
    MANAGED = "managed"
    STATIC = "static"


class AddressesExhausted(MalleeError):
    """The cluster has fewer free public addresses than the request has instances."""

    code = "InsufficientAddressCapacity"
    status = 409


@dataclass(frozen=True, order=True)
class AddressPair:
    """An address and the MAC a DHCP server gives it to."""

    address: str
    mac: str


@dataclass(frozen=True)
class AddressPlan:
    """What the config says to hand out: a pool (any MAC) or a table of pairs."""

    mode: PublicMode
    network: netaddr.IPNetwork  # the public interface's subnet
    router: str  # the public interface's own address
    pool: tuple[str, ...] = ()  # MANAGED
    table: tuple[AddressPair, ...] = ()  # STATIC


def _mac(text: str, where: str) -> str:
    try:
        return str(netaddr.EUI(text, dialect=netaddr.mac_unix_expanded)).lower()
    except (netaddr.AddrFormatError, TypeError):
        raise ConfigError(f"{where}: {text!r} is not a MAC address") from None


def _address_in(text: str, plan_network: netaddr.IPNetwork, router: str, where: str) -> str:
    try:
        address = netaddr.IPAddress(text, version=4)
    except (netaddr.AddrFormatError, ValueError):
        raise ConfigError(f"{where}: {text!r} is not an IPv4 address") from None
    if address not in plan_network or address in (plan_network.network, plan_network.broadcast):
        raise ConfigError(
            f"{where}: {address} is not a host address of {plan_network}, the subnet of the"
            " public interface"
        )
    if str(address) == router:
        raise ConfigError(f"{where}: {address} is the public interface's own address")
    return str(address)


def parse_pool(text: str) -> list[str]:
    """``FIRST-LAST`` or a CIDR, as its host addresses in order."""
    try:
        if "-" in text:
            first, last = (part.strip() for part in text.split("-", 1))
            return [str(a) for a in netaddr.IPRange(first, last)]
        network = netaddr.IPNetwork(text, version=4)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise ConfigError(
            f"[cc] public_pool: {text!r} is neither FIRST-LAST nor a CIDR ({e})"
        ) from None
    hosts = network.iter_hosts() if network.prefixlen < 31 else network
    return [str(a) for a in hosts]


def plan(
    mode: PublicMode,
    interface_address: netaddr.IPNetwork,
    pool: str,
    table: Sequence[str],
) -> AddressPlan:
    """Check the ``[cc]`` public keys against the public interface's address; every
    mistake is named, and nothing starts with one."""
    network = interface_address.cidr
    router = str(interface_address.ip)
    if mode is PublicMode.MANAGED:
        if not pool:
            raise ConfigError("[cc] public_mode = managed needs public_pool (FIRST-LAST or a CIDR)")
        addresses = [_address_in(a, network, router, "[cc] public_pool") for a in parse_pool(pool)]
        return AddressPlan(mode, network, router, pool=tuple(addresses))
    if not table:
        raise ConfigError('[cc] public_mode = static needs public_table ("MAC=ADDRESS" pairs)')
    pairs: list[AddressPair] = []
    for entry in table:
        where = f"[cc] public_table entry {entry!r}"
        mac, sep, address = entry.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected MAC=ADDRESS")
        pairs.append(
            AddressPair(
                _address_in(address.strip(), network, router, where), _mac(mac.strip(), where)
            )
        )
    for field in ("mac", "address"):
        seen: set[str] = set()
        for pair in pairs:
            value = getattr(pair, field)
            if value in seen:
                raise ConfigError(f"[cc] public_table: {field} {value} appears more than once")
            seen.add(value)
    return AddressPlan(mode, network, router, table=tuple(pairs))


class AddressStore:
    """The pairs held by instances, and the elastic addresses associated with them, in
    the CC's SQLite file."""

    def __init__(self, path: Path, plan: AddressPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._db = store.connect(
            path,
            "CREATE TABLE IF NOT EXISTS public_addresses ("
            " address TEXT PRIMARY KEY, mac TEXT NOT NULL UNIQUE,"
            " instance_id TEXT NOT NULL UNIQUE)",
            "CREATE TABLE IF NOT EXISTS elastic_addresses ("
            " public_ip TEXT PRIMARY KEY, instance_id TEXT NOT NULL UNIQUE)",
        )

    def held(self) -> dict[str, AddressPair]:
        """Instance id → its pair."""
        with self._lock:
            rows = self._db.execute("SELECT instance_id, address, mac FROM public_addresses")
            return {i: AddressPair(a, m) for i, a, m in rows.fetchall()}

    def take(self, wanted: Sequence[tuple[str, str]]) -> dict[str, AddressPair]:
        """A pair for each (instance id, MAC of its public NIC), all or none. In MANAGED
        mode the pair keeps the instance's MAC; in STATIC mode it is the table's."""
        with self._lock:
            rows = self._db.execute("SELECT instance_id, address, mac FROM public_addresses")
            held = {i: AddressPair(a, m) for i, a, m in rows.fetchall()}
            kept = {i: held[i] for i, _ in wanted if i in held}  # sent again: what it has
            fresh = [(i, mac) for i, mac in wanted if i not in held]
            used_addresses = {p.address for p in held.values()}
            used_macs = {p.mac for p in held.values()}
            if self.plan.mode is PublicMode.MANAGED:
                free = [AddressPair(a, "") for a in self.plan.pool if a not in used_addresses]
            else:
                free = [
                    p
                    for p in self.plan.table
                    if p.address not in used_addresses and p.mac not in used_macs
                ]
            if self.plan.mode is PublicMode.MANAGED and (
                clash := sorted({m.lower() for _, m in fresh} & used_macs)
            ):
                raise InvalidParameter(f"public NICs {clash} hold public addresses already")
            if len(free) < len(fresh):
                source = "public_pool" if self.plan.mode is PublicMode.MANAGED else "public_table"
                raise AddressesExhausted(
                    f"{len(fresh)} instances need public addresses; the cluster's {source}"
                    f" has {len(free)} free of {len(self.plan.pool or self.plan.table)}"
                )
            given = {
                instance_id: AddressPair(pair.address, pair.mac or mac.lower())
                for (instance_id, mac), pair in zip(fresh, free, strict=False)
            }
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no SQLITE_BUSY midway
                self._db.executemany(
                    "INSERT INTO public_addresses VALUES (?, ?, ?)",
                    [(p.address, p.mac, i) for i, p in given.items()],
                )
            return kept | given

    def release(self, instance_ids: Iterable[str]) -> list[AddressPair]:
        """Give back what these instances hold; the pairs given back."""
        ids = list(instance_ids)
        if not ids:
            return []
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no SQLITE_BUSY midway
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(
                f"SELECT address, mac FROM public_addresses WHERE instance_id IN ({marks})", ids
            ).fetchall()
            self._db.execute(f"DELETE FROM public_addresses WHERE instance_id IN ({marks})", ids)
        return [AddressPair(a, m) for a, m in rows]

    def elastic(self) -> dict[str, str]:
        """Elastic address → the instance it is associated with."""
        with self._lock:
            rows = self._db.execute("SELECT public_ip, instance_id FROM elastic_addresses")
            return dict(rows.fetchall())

    def put_elastic(self, public_ip: str, instance_id: str) -> None:
        """Associate ``public_ip`` with ``instance_id``, and with nothing else: an address
        moved, or an instance given another, holds only the new association."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no SQLITE_BUSY midway
            self._db.execute(
                "DELETE FROM elastic_addresses WHERE public_ip = ? OR instance_id = ?",
                (public_ip, instance_id),
            )
            self._db.execute(
                "INSERT INTO elastic_addresses VALUES (?, ?)", (public_ip, instance_id)
            )

    def delete_elastic(self, public_ip: str) -> bool:
        """Whether the address was associated."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM elastic_addresses WHERE public_ip = ?", (public_ip,)
            )
            return cursor.rowcount > 0
