"""startNetwork: a bridge per VLAN that instances' private NICs join."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mallee.common.rpc import RemoteError
from tests.support.daemons import NcDaemon
from tests.support.guest import GuestImage, run_request


def bridge_exists(name: str) -> bool:
    return Path("/sys/class/net", name, "bridge").is_dir()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A bridge prefix of this test's own; whatever it leaves is removed."""
    prefix = "mlt" + secrets.token_hex(2)
    yield prefix
    for link in Path("/sys/class/net").glob(f"{prefix}*"):
        subprocess.run(["ip", "link", "del", link.name], capture_output=True)


def test_private_nic_on_a_started_vlan(
    nc_factory: Callable[..., NcDaemon], guest: GuestImage, prefix: str
) -> None:
    nc = nc_factory(private_bridge_prefix=prefix)
    instance_id = "i-0000000000000c1a0"
    body = run_request(instance_id, guest, net={"private_mac": "d0:0d:00:00:0c:1a", "vlan": 42})

    with pytest.raises(RemoteError) as caught:
        nc.client.call("POST", "/v1/instances", body)
    assert (caught.value.status, caught.value.code) == (409, "NetworkNotStarted")
    assert nc.files() == [] and nc.domains() == set()

    started = nc.client.call("POST", "/v1/networks", {"vlan": 42})
    assert started == {"vlan": 42, "bridge": f"{prefix}42", "peers": []}  # no overlay here
    assert bridge_exists(f"{prefix}42")
    assert nc.client.call("POST", "/v1/networks", {"vlan": 42}) == started  # idempotent
    assert nc.client.call("GET", "/v1/networks") == {"networks": [started]}

    assert nc.launch(body)["nc_state"] == "running"
    xml = subprocess.run(
        ["virsh", "dumpxml", instance_id], capture_output=True, text=True, check=True
    ).stdout
    [nic] = ElementTree.fromstring(xml).findall("./devices/interface")
    assert nic.find("source").get("bridge") == f"{prefix}42"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "d0:0d:00:00:0c:1a"  # type: ignore[union-attr]
    tap = nic.find("target").get("dev")  # type: ignore[union-attr]
    assert Path(f"/sys/class/net/{prefix}42/brif/{tap}").exists()  # the tap is on the bridge

    with pytest.raises(RemoteError) as caught:
        nc.client.call("DELETE", "/v1/networks/42")
    assert (caught.value.status, caught.value.code) == (409, "NetworkInUse")
    assert instance_id in caught.value.message

    nc.client.call("DELETE", f"/v1/instances/{instance_id}")
    assert nc.client.call("DELETE", "/v1/networks/42") == {"vlan": 42}
    assert not bridge_exists(f"{prefix}42")
    with pytest.raises(RemoteError) as caught:
        nc.client.call("DELETE", "/v1/networks/42")
    assert (caught.value.status, caught.value.code) == (404, "InvalidNetwork.NotFound")


def test_bad_vlan(nc_factory: Callable[..., NcDaemon], prefix: str) -> None:
    nc = nc_factory(private_bridge_prefix=prefix)
    with pytest.raises(RemoteError) as caught:
        nc.client.call("POST", "/v1/networks", {"vlan": 5000})
    assert (caught.value.status, caught.value.code) == (400, "MalformedRequest")
    assert "vlan" in caught.value.message
    assert not list(Path("/sys/class/net").glob(f"{prefix}*"))
