"""The cluster's public network in MANAGED and STATIC modes: the store of held
(address, MAC) pairs, the dnsmasq that serves exactly them, and the CC's routing table
(the metadata redirect). SYSTEM mode has none of them: the site's DHCP and router serve
the public NICs."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from mallee.cc import addresses
from mallee.cc.addresses import AddressStore, PublicAddress, PublicMode
from mallee.cc.config import CcConfig
from mallee.cc.dhcp import DhcpServer, interface_address
from mallee.cc.router import Router, metadata_target
from mallee.common.config import ConfigError


class PublicNetwork:
    def __init__(self, store: AddressStore, dhcp: DhcpServer, router: Router) -> None:
        self.store = store
        self.dhcp = dhcp
        self.router = router
        self._lock = threading.Lock()
        self._held = store.held()  # what describe calls read, without the store's file

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
        dhcp = DhcpServer(state / "dhcp", config.public_interface, plan, config.public_dns)
        router = Router(config.public_interface, metadata)
        router.start()
        dhcp.start(store.held().values())
        return cls(store, dhcp, router)

    def address_of(self, instance_id: str) -> str:
        pair = self._held.get(instance_id)
        return pair.address if pair else ""

    def take(self, wanted: Sequence[tuple[str, str]]) -> dict[str, PublicAddress]:
        """Pairs for these (instance id, public MAC), served before this returns: the
        instance's first DHCP request is answered."""
        with self._lock:
            given = self.store.take(wanted)
            self._held = self.store.held()
            self.dhcp.serve(self._held.values())
        return given

    def keep_only(self, live: Collection[str]) -> None:
        """Give back the pairs of instances not in ``live`` (they ended, or never ran),
        ending their leases; and start dnsmasq again should it have died."""
        with self._lock:
            self.store.release(set(self._held) - set(live))
            self._held = self.store.held()
            self.dhcp.serve(self._held.values())
        self.dhcp.ensure_running()

    def stop(self) -> None:
        self.dhcp.stop()
        self.router.stop()
