"""The CLC's EC2 API driven by boto3, as users drive it: a real `mallee-clc` under
gunicorn over HTTPS, users made by the real `mallee-admin`, every request signed by
botocore (Signature Version 4)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.daemons import ClcDaemon


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def names(ec2: Any) -> list[str]:
    return [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]


def test_key_pairs_made_imported_described_deleted(clc_factory: Callable[..., ClcDaemon]) -> None:
    ec2 = clc_factory().ec2("alice")

    made = ec2.create_key_pair(KeyName="laptop")
    private = serialization.load_pem_private_key(made["KeyMaterial"].encode(), None)
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # EC2's fingerprint of a key it made: the SHA-1 of the private key in PKCS#8
    assert made["KeyFingerprint"] == hashlib.sha1(pkcs8).digest().hex(":")

    theirs = ed25519.Ed25519PrivateKey.generate().public_key()
    openssh = theirs.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    imported = ec2.import_key_pair(KeyName="desktop", PublicKeyMaterial=openssh + b" me@desk")
    blob = base64.b64decode(openssh.split()[1])
    # and of an ed25519 key: the base64 SHA-256 of the OpenSSH key, as ssh-keygen -l shows
    assert imported["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()

    listed = ec2.describe_key_pairs(IncludePublicKey=True)["KeyPairs"]
    assert [(k["KeyName"], k["KeyType"]) for k in listed] == [
        ("laptop", "rsa"),
        ("desktop", "ed25519"),
    ]
    assert listed[1]["PublicKey"] == openssh.decode()
    assert listed[0]["KeyPairId"] == made["KeyPairId"]

    assert error_of(lambda: ec2.create_key_pair(KeyName="laptop"))[:2] == (
        "InvalidKeyPair.Duplicate",
        400,
    )
    assert error_of(lambda: ec2.describe_key_pairs(KeyNames=["phone"]))[:2] == (
        "InvalidKeyPair.NotFound",
        400,
    )
    code, status, message = error_of(
        lambda: ec2.import_key_pair(KeyName="bad", PublicKeyMaterial=b"ssh-rsa notakey")
    )
    assert (code, status) == ("InvalidKey.Format", 400) and "OpenSSH" in message

    ec2.delete_key_pair(KeyName="laptop")
    ec2.delete_key_pair(KeyName="laptop")  # gone already: no error, as in EC2
    assert names(ec2) == ["desktop"]


def test_users_see_and_touch_only_their_own(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    alice, bob = clc.ec2("alice"), clc.ec2("bob")
    alice.create_key_pair(KeyName="laptop")
    assert names(bob) == []
    assert error_of(lambda: bob.describe_key_pairs(KeyNames=["laptop"]))[0] == (
        "InvalidKeyPair.NotFound"
    )
    bob.delete_key_pair(KeyName="laptop")  # deletes nothing of alice's
    bob.create_key_pair(KeyName="laptop")  # a name is the user's own
    assert names(alice) == ["laptop"] and names(bob) == ["laptop"]
    root = clc.ec2("root", admin=True)
    assert sorted(names(root)) == ["laptop", "laptop"]  # an admin sees everyone's


def test_requests_refused_with_ec2s_codes(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    ec2 = clc.ec2("alice")

    unsigned = requests.post(
        clc.url, data={"Action": "DescribeKeyPairs", "Version": "2016-11-15"}, verify=str(clc.ca)
    )
    assert unsigned.status_code == 403
    assert "<Code>MissingAuthenticationToken</Code>" in unsigned.text

    assert error_of(ec2.describe_vpcs)[:2] == ("InvalidAction", 400)  # EC2 has it; mallee not
    code, status, _ = error_of(lambda: ec2.create_key_pair(KeyName="k", DryRun=True))
    assert (code, status) == ("DryRunOperation", 412)
    assert names(ec2) == []  # and nothing was made

    ec2._request_signer._credentials.secret_key = "not-the-secret"
    assert error_of(ec2.describe_key_pairs)[:2] == ("AuthFailure", 401)

    carol = clc.ec2("carol")
    clc.admin("user", "disable", "carol")
    assert error_of(carol.describe_key_pairs)[:2] == ("AuthFailure", 401)
    clc.admin("user", "enable", "carol")
    assert names(carol) == []


def test_nothing_is_lost_to_a_kill_9(clc_factory: Callable[..., ClcDaemon]) -> None:
    clc = clc_factory()
    ec2 = clc.ec2("alice")
    made = ec2.create_key_pair(KeyName="laptop")
    clc.kill9()
    clc.start()
    [kept] = ec2.describe_key_pairs()["KeyPairs"]
    assert (kept["KeyName"], kept["KeyFingerprint"]) == ("laptop", made["KeyFingerprint"])
