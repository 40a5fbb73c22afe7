"""Who may call a real `mallee-cc`, how much they may send, and that one request id
follows a call from the CC to its NC."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from mallee.common import log, rpc
from mallee.common.rpc import ClientTLS, RemoteError, RpcClient
from tests.support.daemons import CcDaemon, Daemon, NcDaemon, Pki
from tests.support.guest import wait_until
from tests.support.http import serve_directory

INSTANCE = "i-0000000000000a0b1"
TWENTY_MB = 20 * 1000 * 1000


def session(pki: Pki, client: ClientTLS | None) -> requests.Session:
    """A plain HTTPS session trusting the cloud CA, showing ``client``'s certificate."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(pki.ca)
    if client is not None:
        s.cert = (client.cert, client.key)
    return s


def error_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A 1 MiB blank raw image, served over HTTP."""
    (tmp_path / "www").mkdir()
    path = tmp_path / "www" / "blank.raw"
    path.write_bytes(b"\0" * (1 << 20))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with serve_directory(tmp_path / "www") as server:
        yield {"id": "emi-b1a4b1a4", "url": f"{server.url}/blank.raw", "digest": digest}


def test_caller_without_certificate(cc_factory: Callable[..., CcDaemon], pki: Pki) -> None:
    cc = cc_factory()
    answer = session(pki, None).get(cc.url + "/v1/nodes")
    assert error_of(answer) == (401, "ClientCertificateRequired")


def test_caller_of_a_role_not_served(cc_factory: Callable[..., CcDaemon], pki: Pki) -> None:
    """A valid certificate of the cloud, but an NC's: a CC serves the CLC and admins."""
    cc = cc_factory()
    with pytest.raises(RemoteError) as caught:
        RpcClient(cc.url, pki.other_nc, retries=0).call("GET", "/v1/nodes")
    assert (caught.value.status, caught.value.code) == (403, "PeerNotAllowed")
    assert "'nc'" in caught.value.message
    assert cc.client.call("GET", "/v1/nodes") == {"nodes": []}  # the CLC is served


def test_request_id_reaches_the_nodes_log(
    cc_factory: Callable[..., CcDaemon],
    nc_factory: Callable[..., NcDaemon],
    pki: Pki,
    blank: dict[str, str],
) -> None:
    nc = nc_factory(libvirt_uri="test:///default", hypervisor="qemu", swap_mb=0)
    cc = cc_factory()
    cc.client.call("POST", "/v1/nodes", {"name": "node1", "url": nc.url})
    wait_until(
        lambda: cc.client.call("GET", "/v1/nodes")["nodes"][0]["health"] == "up", 30, "node1 up"
    )
    cc.client.call(
        "POST",
        "/v1/instances",
        {
            "reservation_id": "r-0123456789abcdef0",
            "owner_id": "alice",
            "vm_type": {"name": "t1.micro", "cores": 1, "memory_mb": 64, "disk_gb": 1},
            "image": blank,
            "instances": [{"instance_id": INSTANCE}],
        },
    )
    request_id = "req-" + secrets.token_hex(8)
    answer = session(pki, pki.clc).get(
        f"{cc.url}/v1/instances/{INSTANCE}/console",
        headers={log.REQUEST_ID_HEADER: request_id},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers[log.REQUEST_ID_HEADER] == request_id
    # the NC's access log line for the console call the CC passed on carries the id
    wanted = (f"GET /v1/instances/{INSTANCE}/console", f"[{request_id}]")
    wait_until(
        lambda: any(all(w in line for w in wanted) for line in nc.log.read_text().splitlines()),
        10,
        f"the NC to log the console call with {request_id}",
    )


@pytest.mark.parametrize("component", ["cc", "nc"])
def test_twenty_megabytes_are_refused(
    component: str,
    cc_factory: Callable[..., CcDaemon],
    nc_factory: Callable[..., NcDaemon],
    pki: Pki,
) -> None:
    daemon: Daemon = cc_factory() if component == "cc" else nc_factory()
    caller = pki.clc if component == "cc" else pki.cc
    body = b'{"instance_id": "' + b"x" * TWENTY_MB + b'"}'
    answer = session(pki, caller).post(
        daemon.url + "/v1/instances", data=body, headers={"Content-Type": "application/json"}
    )
    assert error_of(answer) == (413, "RequestTooLarge")
    assert str(rpc.MAX_REQUEST_BYTES) in answer.json()["error"]["message"]
