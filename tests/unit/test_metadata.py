"""The metadata service as guests ask it: the instance known by its source address,
EC2's tree and listings at every version, IMDSv2 tokens."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import flask.testing
import pytest

from mallee.cc.client import CcClient
from mallee.clc import db, keypairs, securitygroups, users
from mallee.clc.app import build_cloud, metadata_app
from mallee.clc.config import ClcConfig
from mallee.clc.db import Instance, PrivateAddress, Reservation
from mallee.clc.frontend import Ec2Frontend
from mallee.common.errors import MalleeError
from mallee.common.metrics import Metrics

ADDRESS = "172.31.0.7"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


def no_cluster(url: str) -> CcClient:
    raise MalleeError(f"no cluster at {url} in this test")


@pytest.fixture
def guest(tmp_path: Path) -> flask.testing.FlaskClient:
    """The metadata app, with one running instance at ADDRESS (key, group, user-data)."""
    url = f"sqlite:///{tmp_path / 'clc.db'}"
    db.migrate(url)
    sessions = db.sessions_for(url)
    config = ClcConfig(image_dir=str(tmp_path / "images"))
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
    app = metadata_app(Ec2Frontend(sessions, cloud))
    return app.test_client()


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
