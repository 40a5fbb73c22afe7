"""Bad input to a real `mallee-nc` gets a clear 4xx JSON error and leaks nothing:
no domain, no instance folder, no partial download, no reservation."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from mallee.common.rpc import RemoteError, RpcClient, Unreachable
from tests.support.daemons import NcDaemon, Pki
from tests.support.guest import wait_until
from tests.support.http import FileServer, serve_directory

UNKNOWN = "i-0000000000000dead"


@pytest.fixture
def blank_image(tmp_path: Path) -> Iterator[tuple[FileServer, dict[str, str]]]:
    """A 16 MiB blank disk: its domain runs (the BIOS finds nothing to boot)."""
    (tmp_path / "www").mkdir()
    path = tmp_path / "www" / "blank.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "16M"], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with serve_directory(tmp_path / "www") as server:
        yield (
            server,
            {"id": "emi-0b1a0b1a", "url": f"{server.url}/blank.raw", "digest": f"sha256:{digest}"},
        )


def request(instance_id: str, image: dict[str, str], cores: int = 1) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "reservation_id": "r-0123456789abcdef0",
        "owner_id": "alice",
        "vm_type": {"name": "t1.micro", "cores": cores, "memory_mb": 64, "disk_gb": 1},
        "image": image,
    }


def error_of(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        call()
    return caught.value


def assert_nothing_left(nc: NcDaemon, keep: set[str] | None = None) -> None:
    keep = keep or set()
    assert nc.domains() == keep
    assert {f.split("/")[0] for f in nc.files()} == keep
    assert not list((nc.workdir / "images").glob("*.part"))
    described = nc.client.call("GET", "/v1/instances")["instances"]
    live = {i["instance_id"] for i in described if i["state"]["name"] != "terminated"}
    assert live == keep
    assert nc.client.call("GET", "/v1/resource")["instances"] == len(keep)


def test_malformed_json(nc_factory: Callable[..., NcDaemon]) -> None:
    nc = nc_factory()
    response = nc.client.session.post(
        nc.url + "/v1/instances", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MalformedRequest"
    assert "not valid JSON" in response.json()["error"]["message"]
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", {"owner_id": "alice"}))
    assert (error.status, error.code) == (400, "MalformedRequest")
    assert "is a required property" in error.message
    image = {"id": "emi-12345678", "url": "http://127.0.0.1:9/x", "digest": "sha256:" + "0" * 64}
    bad_id = request("i-xyz", image)
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", bad_id))
    assert error.message.startswith("instance_id: 'i-xyz' does not match")
    assert_nothing_left(nc)


def test_unknown_instance(nc_factory: Callable[..., NcDaemon]) -> None:
    nc = nc_factory()
    for method, path in [
        ("DELETE", f"/v1/instances/{UNKNOWN}"),
        ("POST", f"/v1/instances/{UNKNOWN}/reboot"),
        ("GET", f"/v1/instances/{UNKNOWN}/console"),
        ("GET", f"/v1/instances?instance_id={UNKNOWN}"),
    ]:
        error = error_of(partial(nc.client.call, method, path))
        assert (error.status, error.code) == (404, "InvalidInstanceID.NotFound"), path
        assert UNKNOWN in error.message


def test_duplicate_instance_id(nc_factory: Callable[..., NcDaemon], blank_image: Any) -> None:
    nc = nc_factory()
    _, image = blank_image
    first = request("i-0000000000000000a", image)
    nc.launch(first)
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", first))
    assert (error.status, error.code) == (409, "InvalidInstanceID.Duplicate")
    assert_nothing_left(nc, keep={"i-0000000000000000a"})  # the first one is untouched
    nc.client.call("DELETE", "/v1/instances/i-0000000000000000a")
    assert_nothing_left(nc)


def failure_of(nc: NcDaemon, body: dict[str, Any]) -> dict[str, Any]:
    """The failure of a launch the NC admitted, once it failed."""
    outcome = nc.launch(body)
    assert (outcome["nc_state"], outcome["state_reason"]) == ("terminated", "launch failed")
    failure: dict[str, Any] = outcome["failure"]
    assert str(nc.workdir) not in failure["message"]  # no host paths
    return failure


def test_image_url_404(nc_factory: Callable[..., NcDaemon], blank_image: Any) -> None:
    nc = nc_factory()
    server, image = blank_image
    missing = {**image, "url": f"{server.url}/no-such.raw"}
    failure = failure_of(nc, request(UNKNOWN, missing))
    assert (failure["status"], failure["code"]) == (422, "ImageFetchFailed")
    assert "/no-such.raw answered 404" in failure["message"]
    assert_nothing_left(nc)


def test_digest_mismatch(nc_factory: Callable[..., NcDaemon], blank_image: Any) -> None:
    nc = nc_factory()
    _, image = blank_image
    wrong = {**image, "digest": "sha256:" + "f" * 64}
    failure = failure_of(nc, request(UNKNOWN, wrong))
    assert (failure["status"], failure["code"]) == (422, "ImageDigestMismatch")
    assert image["digest"] in failure["message"]  # says what it got
    assert_nothing_left(nc)
    assert list((nc.workdir / "images").iterdir()) == []


def test_not_qcow2_though_declared_so(
    nc_factory: Callable[..., NcDaemon], blank_image: Any
) -> None:
    nc = nc_factory()
    _, image = blank_image
    failure = failure_of(nc, request(UNKNOWN, {**image, "format": "qcow2"}))
    assert (failure["status"], failure["code"]) == (422, "ImageRejected")
    assert "declared qcow2" in failure["message"]
    assert_nothing_left(nc)


def test_not_enough_resources(nc_factory: Callable[..., NcDaemon], blank_image: Any) -> None:
    nc = nc_factory(max_cores=1)
    _, image = blank_image
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", request(UNKNOWN, image, 2)))
    assert (error.status, error.code) == (409, "InsufficientInstanceCapacity")
    assert "needs 2 cores" in error.message and "1 cores" in error.message
    assert_nothing_left(nc)
    nc.launch(request("i-0000000000000000b", image))
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", request(UNKNOWN, image)))
    assert error.code == "InsufficientInstanceCapacity"
    assert_nothing_left(nc, keep={"i-0000000000000000b"})
    nc.client.call("DELETE", "/v1/instances/i-0000000000000000b")
    assert nc.client.call("GET", "/v1/resource")["cores_available"] == 1


def test_caller_without_certificate(nc_factory: Callable[..., NcDaemon], pki: Pki) -> None:
    nc = nc_factory()
    session = requests.Session()
    session.trust_env = False
    response = session.get(nc.url + "/v1/instances", verify=str(pki.ca))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ClientCertificateRequired"


def test_caller_of_the_wrong_role(nc_factory: Callable[..., NcDaemon], pki: Pki) -> None:
    nc = nc_factory()
    error = error_of(lambda: RpcClient(nc.url, pki.other_nc).call("GET", "/v1/instances"))
    assert (error.status, error.code) == (403, "PeerNotAllowed")
    assert "'nc'" in error.message


def test_caller_with_another_cas_certificate(nc_factory: Callable[..., NcDaemon], pki: Pki) -> None:
    nc = nc_factory()
    with pytest.raises(Unreachable, match=r"(?i)ssl|certificate|alert"):
        RpcClient(nc.url, pki.foreign, retries=0).call("GET", "/v1/instances")
    # the server logs the refusal a moment later
    wait_until(lambda: "certificate verify failed" in nc.log.read_text(), 10, "the NC to log it")


def test_plain_http_is_not_served(nc_factory: Callable[..., NcDaemon]) -> None:
    nc = nc_factory()
    with pytest.raises(Unreachable):
        RpcClient(nc.url.replace("https", "http"), retries=0).call("GET", "/healthz")


def test_security_group_mistakes(nc_factory: Callable[..., NcDaemon], blank_image: Any) -> None:
    """A malformed rule is refused naming it; an instance in a group the node was not
    given, or the removal of a group a live instance is in, is refused and changes
    nothing."""
    nc = nc_factory()
    _, image = blank_image
    group = "/v1/security-groups/sg-0000000b"
    bad_rule = {"ingress": [{"protocol": "gre", "cidr": "10.0.0.0/8"}]}
    error = error_of(lambda: nc.client.call("PUT", group, bad_rule))
    assert (error.status, error.code) == (400, "MalformedRequest")
    assert "'gre' is not one of" in error.message
    bad_id = "/v1/security-groups/sg-nothex!"
    error = error_of(lambda: nc.client.call("PUT", bad_id, {}))
    assert (error.status, error.code) == (400, "MalformedRequest")
    assert nc.client.call("GET", "/v1/security-groups") == {"security_groups": []}

    in_group = {**request(UNKNOWN, image), "net": {"security_groups": ["sg-0000000b"]}}
    error = error_of(lambda: nc.client.call("POST", "/v1/instances", in_group))
    assert (error.status, error.code) == (404, "InvalidGroup.NotFound")
    assert "sg-0000000b" in error.message
    assert_nothing_left(nc)

    nc.client.call(
        "PUT",
        group,
        {"ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}]},
    )
    nc.launch(in_group)
    error = error_of(lambda: nc.client.call("DELETE", group))
    assert (error.status, error.code) == (409, "DependencyViolation")
    assert UNKNOWN in error.message
    [kept] = nc.client.call("GET", "/v1/security-groups")["security_groups"]
    assert kept["ingress"][0]["from_port"] == 22
    nc.client.call("DELETE", f"/v1/instances/{UNKNOWN}")
    nc.client.call("DELETE", group)
    assert nc.client.call("GET", "/v1/security-groups") == {"security_groups": []}
    assert_nothing_left(nc)
