"""The metadata service as guests ask it: the instance known by its source address,
EC2's tree and listings at every version, IMDSv2 tokens."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import flask.testing
import pytest

from mallee.cc import metadataproxy
from mallee.cc.client import CcClient
from mallee.clc import db, keypairs, securitygroups, users
from mallee.clc.app import build_cloud, metadata_app
from mallee.clc.config import ClcConfig
from mallee.clc.db import Instance, PrivateAddress, Reservation
from mallee.clc.frontend import Ec2Frontend
from mallee.common import vouch
from mallee.common.errors import MalleeError
from mallee.common.metrics import Metrics
from mallee.common.server import serve_plain_http
from tests.support.daemons import free_port

ADDRESS = "172.31.0.7"
SECRET = "shared by the CLC and its CCs"
CC = "10.98.0.2"  # a CC's own address: no instance's
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


def no_cluster(url: str) -> CcClient:
    raise MalleeError(f"no cluster at {url} in this test")


@pytest.fixture
def guest(tmp_path: Path) -> flask.testing.FlaskClient:
    return metadata_service(tmp_path, SECRET).test_client()


def metadata_service(tmp_path: Path, secret: str) -> flask.Flask:
    """The metadata app, with one running instance at ADDRESS (key, group, user-data),
    believing CC proxies that sign with ``secret``."""
    url = f"sqlite:///{tmp_path / 'clc.db'}"
    db.migrate(url)
    sessions = db.sessions_for(url)
    config = ClcConfig(image_dir=str(tmp_path / "images"), metadata_proxy_secret=secret)
    cloud = build_cloud(config, sessions, no_cluster, "https://clc", Metrics("test"))
    with sessions.write.begin() as session:
        users.create_user(session, "alice")
        caller = users.Caller("alice", admin=False)
        key = keypairs.create(session, caller, "laptop").record
        web = securitygroups.create(session, caller, "web", "web servers")
        session.add(Reservation(reservation_id="r-1", owner="alice", request_digest="-"))
        session.flush()
        session.add(
            Instance(
                instance_id="i-0123456789abcdef0",
                reservation_id="r-1",
                owner="alice",
                launch_index=0,
                image_id="emi-1",
                kernel_id="eki-1",
                ramdisk_id=None,
                instance_type="m1.small",
                zone="zone-a",
                key_name="laptop",
                public_key=key.public_key,
                user_data=base64.b64encode(b"#!/bin/sh\n").decode(),
                group_ids=[web.group_id],
                state="running",
                private_ip=ADDRESS,
            )
        )
        session.flush()
        session.add(PrivateAddress(address=ADDRESS, instance_id="i-0123456789abcdef0"))
    return metadata_app(Ec2Frontend(sessions, cloud))


def get(client: flask.testing.FlaskClient, path: str, source: str = ADDRESS, **headers: str) -> Any:
    return client.get(path, environ_base={"REMOTE_ADDR": source}, headers=headers)


def test_the_tree_cloud_init_walks(guest: flask.testing.FlaskClient) -> None:
    assert "2009-04-04" in get(guest, "/").text.split("\n")
    for version in ("latest", "2009-04-04", "2021-03-23"):
        assert get(guest, f"/{version}/meta-data/instance-id").text == "i-0123456789abcdef0"
    listing = get(guest, "/latest/meta-data/").text.split("\n")
    assert {"instance-id", "local-ipv4", "placement/", "public-keys/", "kernel-id"} <= set(listing)
    assert "public-ipv4" not in listing  # no address associated
    assert get(guest, "/latest/meta-data/local-ipv4").text == ADDRESS
    assert get(guest, "/latest/meta-data/mac").text == "d0:0d:ac:1f:00:07"
    assert get(guest, "/latest/meta-data/local-hostname").text == "ip-172-31-0-7.mallee.internal"
    assert get(guest, "/latest/meta-data/placement/availability-zone").text == "zone-a"
    nic = "/latest/meta-data/network/interfaces/macs/d0:0d:ac:1f:00:07/"
    assert "device-number" in get(guest, nic).text.split("\n")
    assert get(guest, nic + "local-ipv4s").text == ADDRESS
    assert get(guest, nic + "subnet-ipv4-cidr-block").text == "172.31.0.0/16"
    assert get(guest, "/latest/meta-data/security-groups").text == "web"
    assert get(guest, "/latest/meta-data/public-keys/").text == "0=laptop"
    assert get(guest, "/latest/meta-data/public-keys/0/").text == "openssh-key"
    key = get(guest, "/latest/meta-data/public-keys/0/openssh-key").text
    assert key.startswith("ssh-rsa ") and key.endswith("\n")
    assert get(guest, "/latest/user-data").data == b"#!/bin/sh\n"
    document = json.loads(get(guest, "/latest/dynamic/instance-identity/document").text)
    assert (document["instanceId"], document["privateIp"]) == ("i-0123456789abcdef0", ADDRESS)


def test_what_is_not_there(guest: flask.testing.FlaskClient) -> None:
    assert get(guest, "/latest/meta-data/nothing").status_code == 404
    assert get(guest, "/1999-01-01/meta-data/").status_code == 404
    assert get(guest, "/latest/meta-data/instance-id/more").status_code == 404
    # another address is no instance of this cloud
    stranger = get(guest, "/latest/meta-data/instance-id", source="172.31.0.8")
    assert stranger.status_code == 404 and "172.31.0.8" in stranger.text


def test_imdsv2_tokens(guest: flask.testing.FlaskClient) -> None:
    def put(source: str = ADDRESS, **headers: str) -> Any:
        return guest.put("/latest/api/token", environ_base={"REMOTE_ADDR": source}, headers=headers)

    token = put(**{TTL: "60"})
    assert token.status_code == 200 and token.headers[TTL] == "60"
    with_token = get(guest, "/latest/meta-data/instance-id", **{TOKEN: token.text})
    assert with_token.text == "i-0123456789abcdef0"
    assert get(guest, "/latest/meta-data/instance-id", **{TOKEN: "forged"}).status_code == 401
    # a token is the address's it was given to
    elsewhere = put(source="172.31.0.8", **{TTL: "60"}).text
    assert get(guest, "/latest/meta-data/", **{TOKEN: elsewhere}).status_code == 401
    assert put(**{TTL: "0"}).status_code == 400
    assert put(**{TTL: "21601"}).status_code == 400
    assert put().status_code == 400
    assert put(**{TTL: "60", "X-Forwarded-For": "10.0.0.1"}).status_code == 403


INSTANCE_ID = "/latest/meta-data/instance-id"


def vouching(
    secret: str = SECRET, address: str = ADDRESS, method: str = "GET", path: str = INSTANCE_ID,
    at: float | None = None,
) -> dict[str, str]:  # fmt: skip
    """The headers a CC's proxy adds for ``address``."""
    signature = vouch.sign(secret, address, method, path, at)
    return {vouch.ADDRESS_HEADER: address, vouch.SIGNATURE_HEADER: signature}


def test_a_ccs_proxy_vouches_for_the_instance_with_the_shared_secret(
    guest: flask.testing.FlaskClient,
) -> None:
    def asked(path: str = INSTANCE_ID, method: str = "GET", **headers: str) -> Any:
        return guest.open(path, method=method, environ_base={"REMOTE_ADDR": CC}, headers=headers)

    assert asked(**vouching()).text == "i-0123456789abcdef0"  # the instance, not the CC
    refused = {
        "another secret": vouching(secret="guessed"),
        "another path's": vouching(path="/latest/user-data"),
        "another method's": vouching(method="PUT"),
        "a minute old": vouching(at=time.time() - 60),
        "for no instance's address": vouching(address="192.0.2.9"),
    }
    for why, headers in refused.items():
        assert asked(**headers).status_code == 403, why
    forged = {**vouching(), vouch.ADDRESS_HEADER: "172.31.0.8"}  # signed for ADDRESS
    assert asked(**forged).status_code == 403
    # IMDSv2 through the proxy: the token is the vouched address's
    put = vouching(method="PUT", path="/latest/api/token")
    token = asked("/latest/api/token", "PUT", **put, **{TTL: "60"}).text
    assert get(guest, INSTANCE_ID, **{TOKEN: token}).status_code == 200
    assert asked(**vouching(), **{TOKEN: token}).text == "i-0123456789abcdef0"


def test_a_clc_sharing_no_secret_believes_no_proxy(tmp_path: Path) -> None:
    guest = metadata_service(tmp_path, "").test_client()
    headers = vouching(secret="")
    answer = guest.get(INSTANCE_ID, environ_base={"REMOTE_ADDR": CC}, headers=headers)
    assert answer.status_code == 403


def test_the_ccs_proxy_asks_the_clc_for_instances_of_its_vlans_only(tmp_path: Path) -> None:
    """The CC's proxy and the CLC's metadata service, over real HTTP."""
    port = free_port()
    clc = serve_plain_http(metadata_service(tmp_path, SECRET), "127.0.0.1", port, "test-md")
    try:
        proxy = metadataproxy.proxy_app(f"127.0.0.1:{port}", SECRET, "172.31.0.0/16")
        instance = proxy.test_client()
        asked = instance.get(INSTANCE_ID, environ_base={"REMOTE_ADDR": ADDRESS})
        assert asked.text == "i-0123456789abcdef0"
        # a guest's own vouch, for another instance, is replaced by the proxy's
        headers = vouching(address="172.31.0.8")
        forged = instance.get(INSTANCE_ID, environ_base={"REMOTE_ADDR": ADDRESS}, headers=headers)
        assert forged.text == "i-0123456789abcdef0"
        stranger = instance.get("/latest/meta-data/", environ_base={"REMOTE_ADDR": "192.0.2.9"})
        assert stranger.status_code == 403  # not an address of the VLANs
    finally:
        clc.shutdown()
        clc.server_close()
    gone = instance.get("/latest/meta-data/", environ_base={"REMOTE_ADDR": ADDRESS})
    assert gone.status_code == 502
