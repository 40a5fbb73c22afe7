"""Each VLAN's slice of the cloud's private subnet (seed §2.2: a class-B subnet cut into
per-VLAN slices, DHCP on each). The CLC, which hands out addresses in a slice, and the
CC, which routes it and serves its DHCP, compute it the same way from the same two
settings, as Eucalyptus' VNET_SUBNET and VNET_ADDRSPERNET did; so no slice is ever sent
between them."""

from __future__ import annotations

import netaddr


def count(subnet: str, prefix: int) -> int:
    """How many /``prefix`` slices ``subnet`` has (slice 0 among them, unused)."""
    network = netaddr.IPNetwork(subnet)
    if prefix < network.prefixlen or prefix > 30:
        raise ValueError(f"/{prefix} slices of {network}: a slice must be within it, /30 at most")
    return int(2 ** (prefix - network.prefixlen))


def slice_of(subnet: str, prefix: int, vlan: int) -> netaddr.IPNetwork:
    """VLAN ``vlan``'s slice: the ``vlan``-th /``prefix`` of ``subnet`` (slice 0 is
    left out, so that no VLAN's slice starts at the subnet's own address)."""
    network = netaddr.IPNetwork(subnet)
    slices = count(subnet, prefix)
    if not 0 < vlan < slices:
        raise ValueError(
            f"VLAN {vlan} has no slice: {network} cut into /{prefix} has slices 1 to {slices - 1}"
        )
    return netaddr.IPNetwork(
        f"{netaddr.IPAddress(network.first + vlan * 2 ** (32 - prefix))}/{prefix}"
    )


def check(section: str, subnet: str, prefix: int) -> None:
    """ValueError naming the ``[section]`` keys if ``subnet`` cannot be cut into
    /``prefix`` slices with room for a router and an instance each."""
    try:
        slices = count(subnet, prefix)
    except (ValueError, netaddr.AddrFormatError) as e:
        raise ValueError(f"[{section}] private_subnet, private_slice_prefix: {e}") from None
    if slices < 2:
        raise ValueError(
            f"[{section}] private_slice_prefix: /{prefix} cuts {subnet} into one slice, and"
            " slice 0 is not used; a VLAN needs slice 1 at least"
        )


def router_of(piece: netaddr.IPNetwork) -> str:
    """The slice's router (its CC): its first host address, as EC2 reserves .1."""
    return str(piece[1])
