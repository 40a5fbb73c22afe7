"""A node's security groups and anti-spoofing on real packets: a tiny TCG guest on the
node's public bridge, the network's router namespace as the "public" side, the rules
changed through the NC's API while the guest runs, and the guest's own shell (on its
serial console) for what it sends."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mallee.nc.firewall import table_name
from tests.support.daemons import NcDaemon, free_port
from tests.support.guest import GuestImage, GuestShell, run_request, wait_for_console
from tests.support.network import (
    InstanceNetwork,
    connect,
    counting,
    dropped,
    echoes,
    hanging_up,
    instance_network,
    nft_tables,
)

GROUP = "sg-0000000a"
ECHO_PORT = 8080
EGRESS_PORT = 9000
Rules = list[dict[str, Any]]
ALL_EGRESS: Rules = [{"protocol": "-1", "cidr": "0.0.0.0/0"}]


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[InstanceNetwork]:
    with instance_network(tmp_path, free_port()) as net:
        yield net


def boot(
    nc: NcDaemon, guest: GuestImage, lan: InstanceNetwork, libvirt_uri: str, host: int
) -> GuestShell:
    """A guest at ``lan.address(host)`` in GROUP, up, with its shell."""
    instance_id = f"i-00000000000f1e{host:03x}"
    net = {
        "public_mac": lan.mac(host),
        "public_ip": lan.address(host),
        "security_groups": [GROUP],
    }
    nc.launch(run_request(instance_id, guest, net=net))
    wait_for_console(nc.client, instance_id, "MALLEE-BOOT-OK")
    return GuestShell(libvirt_uri, instance_id)


def put_group(nc: NcDaemon, ingress: Rules, egress: Rules) -> None:
    nc.client.call("PUT", f"/v1/security-groups/{GROUP}", {"ingress": ingress, "egress": egress})


def test_an_ingress_rule_opens_a_port_and_revoking_it_cuts_open_flows(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage, lan: InstanceNetwork, libvirtd: str
) -> None:
    nc = nc_factory(public_bridge=lan.bridge)
    put_group(nc, ingress=[], egress=ALL_EGRESS)
    shell = boot(nc, guest, lan, libvirtd, 2)
    address = lan.address(2)
    try:
        status, _ = shell.run(f"nc -ll -p {ECHO_PORT} -e cat &")
        assert status == 0

        assert dropped(lan.netns, address, ECHO_PORT)  # no ingress rule

        allow_router = {
            "protocol": "tcp",
            "from_port": ECHO_PORT,
            "to_port": ECHO_PORT,
            "cidr": f"{lan.gateway}/32",
        }
        put_group(nc, ingress=[allow_router], egress=ALL_EGRESS)
        connection = connect(lan.netns, address, ECHO_PORT)
        assert connection is not None
        with connection:
            assert echoes(connection)
            assert not router_pings(lan, address)  # the rule opens TCP to that port only

            # The rules hold while the NC is away, and after its restart.
            nc.kill9()
            assert echoes(connection) and not router_pings(lan, address)
            nc.start()
            assert echoes(connection) and not router_pings(lan, address)

            put_group(nc, ingress=[], egress=ALL_EGRESS)
            assert not echoes(connection)  # the open flow is cut at once
    finally:
        shell.close()
        nc.client.call("DELETE", f"/v1/instances/{shell.instance_id}")
    nc.client.call("DELETE", f"/v1/security-groups/{GROUP}")
    assert no_tables_of(nc)


def test_egress_rules_bind_the_guest_and_it_cannot_send_as_another(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage, lan: InstanceNetwork, libvirtd: str
) -> None:
    nc = nc_factory(public_bridge=lan.bridge)
    put_group(nc, ingress=[], egress=ALL_EGRESS)
    shell = boot(nc, guest, lan, libvirtd, 3)
    reach_router = f"nc -w 2 {lan.gateway} {EGRESS_PORT} < /dev/null"
    ping_router = f"ping -c 1 -W 1 {lan.gateway} > /dev/null"
    try:
        with hanging_up(lan.netns, EGRESS_PORT):
            assert shell.run(reach_router)[0] == 0
            put_group(nc, ingress=[], egress=[])
            assert shell.run(reach_router)[0] != 0
            assert shell.run(ping_router)[0] != 0
            put_group(nc, ingress=[], egress=ALL_EGRESS)
            assert shell.run(ping_router)[0] == 0

            # Another MAC, or another address: nothing it sends so reaches the router.
            spoofed = lan.address(99)
            seen = {
                "own": f"ether saddr {lan.mac(3)} ip saddr {lan.address(3)}",
                "other mac": f"ether saddr {lan.mac(99)}",
                "other address": f"ip saddr {spoofed}",
            }
            with counting(lan.netns, seen) as count:
                assert shell.run(f"ip link set eth0 address {lan.mac(99)}")[0] == 0
                shell.run(f"ping -c 2 -W 1 {lan.gateway}")
                assert shell.run(f"ip link set eth0 address {lan.mac(3)}")[0] == 0
                assert shell.run(f"ip addr add {spoofed}/24 dev eth0")[0] == 0
                shell.run(f"ping -c 2 -W 1 -I {spoofed} {lan.gateway}")
                # Its own MAC and address still work (once its ARP, tried from the other
                # address and dropped, is asked again).
                assert shell.run(f"ping -c 4 -W 1 {lan.gateway} > /dev/null")[0] == 0
                assert count("own") >= 1
                assert count("other mac") == 0
                assert count("other address") == 0
    finally:
        shell.close()
        nc.client.call("DELETE", f"/v1/instances/{shell.instance_id}")
    assert no_tables_of(nc)


def router_pings(lan: InstanceNetwork, address: str) -> bool:
    ping = ["ip", "netns", "exec", lan.netns, "ping", "-c", "1", "-W", "1", address]
    return subprocess.run(ping, capture_output=True, check=False).returncode == 0


def no_tables_of(nc: NcDaemon) -> bool:
    """The node's tables go with its last instance."""
    return not any(t.split()[1] == table_name(nc.name) for t in nft_tables())
