"""The CC's public address plans (the ``[cc]`` keys checked) and store (pairs held
by instances, in its SQLite file)."""

from __future__ import annotations

from pathlib import Path

import netaddr
import pytest

from mallee.cc.addresses import (
    AddressesExhausted,
    AddressPair,
    AddressStore,
    PublicMode,
    plan,
)
from mallee.cc.config import CcConfig
from mallee.cc.publicnet import PublicNetwork
from mallee.common.config import ConfigError
from mallee.common.errors import InvalidParameter

INTERFACE = netaddr.IPNetwork("198.51.100.1/24")


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ("", "needs public_pool"),
        ("198.51.100.10-", "neither FIRST-LAST nor a CIDR"),
        ("banana", "neither FIRST-LAST nor a CIDR"),
        ("203.0.113.0/30", "203.0.113.1 is not a host address of 198.51.100.0/24"),
        ("198.51.100.250-198.51.100.255", "198.51.100.255 is not a host address"),
        ("198.51.100.0/30", "198.51.100.1 is the public interface's own address"),
    ],
)
def test_a_managed_pool_outside_the_interfaces_subnet_is_refused(pool: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(PublicMode.MANAGED, INTERFACE, pool, [])


def test_a_managed_pool_is_a_range_or_the_hosts_of_a_cidr() -> None:
    assert plan(PublicMode.MANAGED, INTERFACE, "198.51.100.10-198.51.100.12", []).pool == (
        "198.51.100.10",
        "198.51.100.11",
        "198.51.100.12",
    )
    assert plan(PublicMode.MANAGED, INTERFACE, "198.51.100.8/30", []).pool == (
        "198.51.100.9",
        "198.51.100.10",
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "needs public_table"),
        (["d0:0d:00:00:00:01 198.51.100.10"], "expected MAC=ADDRESS"),
        (["d0:0d:00:00:00=198.51.100.10"], "'d0:0d:00:00:00' is not a MAC address"),
        (["d0:0d:00:00:00:01=198.51.100.300"], "is not an IPv4 address"),
        (["d0:0d:00:00:00:01=10.0.0.5"], "10.0.0.5 is not a host address of 198.51.100.0/24"),
        (
            ["d0:0d:00:00:00:01=198.51.100.10", "D0-0D-00-00-00-01=198.51.100.11"],
            "mac d0:0d:00:00:00:01 appears more than once",
        ),
        (
            ["d0:0d:00:00:00:01=198.51.100.10", "d0:0d:00:00:00:02=198.51.100.10"],
            "address 198.51.100.10 appears more than once",
        ),
    ],
)
def test_a_malformed_or_duplicate_static_table_is_refused(table: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(PublicMode.STATIC, INTERFACE, "", table)


def test_managed_pairs_keep_the_instances_mac_and_outlive_the_store(tmp_path: Path) -> None:
    pool = plan(PublicMode.MANAGED, INTERFACE, "198.51.100.10-198.51.100.11", [])
    store = AddressStore(tmp_path / "cc.db", pool)
    given = store.take([("i-1", "D0:0D:0A:00:00:02")])
    assert given == {"i-1": AddressPair("198.51.100.10", "d0:0d:0a:00:00:02")}
    assert store.take([("i-1", "d0:0d:0a:00:00:02")]) == given  # sent again: the same pair
    with pytest.raises(InvalidParameter, match="d0:0d:0a:00:00:02"):
        store.take([("i-2", "d0:0d:0a:00:00:02")])  # a MAC already served
    with pytest.raises(AddressesExhausted, match=r"2 instances .* public_pool has 1 free of 2"):
        store.take([("i-2", "d0:0d:0a:00:00:03"), ("i-3", "d0:0d:0a:00:00:04")])
    assert set(store.held()) == {"i-1"}  # all or none: the failed request holds nothing

    restarted = AddressStore(tmp_path / "cc.db", pool)
    assert restarted.held() == given
    assert restarted.take([("i-2", "d0:0d:0a:00:00:03")])["i-2"].address == "198.51.100.11"
    assert restarted.release(["i-1", "i-never"]) == [given["i-1"]]
    assert restarted.take([("i-4", "d0:0d:0a:00:00:05")])["i-4"].address == "198.51.100.10"


def test_static_pairs_come_whole_from_the_table(tmp_path: Path) -> None:
    table = plan(
        PublicMode.STATIC,
        INTERFACE,
        "",
        ["d0:0d:c6:33:64:0a=198.51.100.10", "d0:0d:c6:33:64:0b=198.51.100.11"],
    )
    store = AddressStore(tmp_path / "cc.db", table)
    given = store.take([("i-1", "d0:0d:0a:00:00:02"), ("i-2", "d0:0d:0a:00:00:03")])
    assert given == {
        "i-1": AddressPair("198.51.100.10", "d0:0d:c6:33:64:0a"),
        "i-2": AddressPair("198.51.100.11", "d0:0d:c6:33:64:0b"),
    }
    with pytest.raises(AddressesExhausted, match="public_table has 0 free of 2"):
        store.take([("i-3", "d0:0d:0a:00:00:04")])
    store.release(["i-1"])
    assert store.take([("i-3", "d0:0d:0a:00:00:04")])["i-3"] == given["i-1"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"public_mode": "bridged"}, "'bridged' is not one of system, managed, static"),
        ({"public_pool": "198.51.100.0/24"}, "in system mode the site's DHCP serves"),
        ({"public_mode": "managed"}, "needs public_interface"),
        (
            {"public_mode": "static", "public_interface": "mallee-no-such"},
            "this host has no interface 'mallee-no-such'",
        ),
    ],
)
def test_public_keys_that_cannot_work_stop_the_cc_at_start(
    tmp_path: Path, keys: dict[str, str], message: str
) -> None:
    config = CcConfig(state_dir=str(tmp_path), **keys)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        PublicNetwork.from_config(config)
    assert not (tmp_path / "cc.db").exists()  # nothing made
