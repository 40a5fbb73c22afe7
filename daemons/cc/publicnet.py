"""The cluster's public network in MANAGED and STATIC modes: the store of held
(address, MAC) pairs and elastic addresses, the dnsmasq that serves exactly those pairs,
and the CC's routing table (the metadata redirect, the elastic addresses' translation).
SYSTEM mode has none of them: the site's DHCP and router serve the public NICs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from mallee.cc import addresses
from mallee.cc.addresses import AddressPair, AddressStore, PublicMode
from mallee.cc.config import CcConfig
from mallee.cc.dhcp import DhcpServer, interface_address
from mallee.cc.router import Router, metadata_target
from mallee.common.config import ConfigError
from mallee.common.errors import HostCommandFailed, InvalidParameter, MalleeError, NotFound


class ElasticAddressNotFound(NotFound):
    code = "InvalidAddress.NotFound"


class NoPublicNetwork(MalleeError):
    """In SYSTEM mode the CC routes no public traffic: it has nothing to translate."""

    code = "UnsupportedOperation"
    status = 409


class PublicNetwork:
    def __init__(self, store: AddressStore, dhcp: DhcpServer, router: Router) -> None:
        self.store = store
        self.dhcp = dhcp
        self.router = router
        self._lock = threading.Lock()
        # the store's contents, kept here as they change: describe calls, every poll and
        # every translation read them without the store's file
        self._held = store.held()
        self._elastic = store.elastic()
        self._translated: dict[str, str] | None = None  # as the router last applied

    @classmethod
    def from_config(cls, config: CcConfig) -> PublicNetwork | None:
        """The public network the ``[cc]`` keys ask for, serving already; None in
        SYSTEM mode. Every mistake in the keys is a ConfigError naming it."""
        try:
            mode = PublicMode(config.public_mode)
        except ValueError:
            choices = ", ".join(m.value for m in PublicMode)
            raise ConfigError(
                f"[cc] public_mode: {config.public_mode!r} is not one of {choices}"
            ) from None
        if mode is PublicMode.SYSTEM:
            if config.public_pool or config.public_table:
                raise ConfigError(
                    "[cc] public_pool and public_table are for public_mode managed and static;"
                    " in system mode the site's DHCP serves the instances"
                )
            return None
        if not config.public_interface:
            raise ConfigError(
                f"[cc] public_mode = {mode.value} needs public_interface: the CC's interface"
                " on the network the nodes bridge instances' public NICs onto"
            )
        plan = addresses.plan(
            mode,
            interface_address(config.public_interface),
            config.public_pool,
            config.public_table,
        )
        metadata = metadata_target(config.metadata_address) if config.metadata_address else None
        state = Path(config.state_dir)
        store = AddressStore(state / "cc.db", plan)
        dhcp = DhcpServer(
            state / "dhcp", config.public_interface, plan.network, plan.router, config.public_dns
        )
        router = Router(config.public_interface, metadata)
        router.check()
        network = cls(store, dhcp, router)
        try:
            with network._lock:
                network._translate()
            dhcp.start(store.held().values())
        except Exception:
            network.stop()  # nothing half-started: no table without its dnsmasq
            raise
        return network

    def address_of(self, instance_id: str) -> str:
        pair = self._held.get(instance_id)
        return pair.address if pair else ""

    def take(self, wanted: Sequence[tuple[str, str]]) -> dict[str, AddressPair]:
        """Pairs for these (instance id, public MAC), served before this returns: the
        instance's first DHCP request is answered."""
        with self._lock:
            given = self.store.take(wanted)
            self._held = {**self._held, **given}
            self.dhcp.serve(self._held.values())
            self._translate()
        return given

    def holders(self) -> set[str]:
        """The instances holding pairs now."""
        return set(self._held)

    def give_back(self, ended: Collection[str]) -> None:
        """Give back the pairs of these instances (they ended, or never ran), ending
        their leases; and start dnsmasq again should it have died."""
        with self._lock:
            if ended:
                self.store.release(ended)
                self._held = {i: pair for i, pair in self._held.items() if i not in ended}
                self.dhcp.serve(self._held.values())
                self._translate()
        self.dhcp.ensure_running()

    def elastic(self) -> dict[str, str]:
        """Elastic address → instance id."""
        return dict(self._elastic)

    def associate(self, public_ip: str, instance_id: str) -> None:
        """Translate ``public_ip`` to and from the instance's address from now on (once
        it has one here, if it has none yet). An address inside the public network's own
        subnet would clash with the pairs handed out there: refused."""
        if public_ip in self.store.plan.network:
            raise InvalidParameter(
                f"elastic address {public_ip} lies in {self.store.plan.network}, the subnet"
                " of the cluster's public interface; elastic addresses come from elsewhere"
            )
        with self._lock:
            self.store.put_elastic(public_ip, instance_id)
            self._elastic = {a: i for a, i in self._elastic.items() if i != instance_id}
            self._elastic[public_ip] = instance_id
            self._translate()

    def disassociate(self, public_ip: str) -> None:
        with self._lock:
            if not self.store.delete_elastic(public_ip):
                raise ElasticAddressNotFound(f"elastic address {public_ip} is not associated here")
            del self._elastic[public_ip]
            self._translate()

    def _translate(self) -> None:
        """The router's table, if the translations changed. Lock held."""
        wanted = {
            public_ip: self._held[instance_id].address
            for public_ip, instance_id in self._elastic.items()
            if instance_id in self._held
        }
        if wanted != self._translated:
            self.router.apply(wanted)
            for public_ip, address in (self._translated or {}).items():
                if wanted.get(public_ip) != address:  # its open flows must not go on
                    self.router.cut_flows(public_ip)
            self._translated = wanted

    def stop(self) -> None:
        self.dhcp.stop()
        with contextlib.suppress(HostCommandFailed):  # no table: none was made
            self.router.stop()
