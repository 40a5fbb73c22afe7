"""Signatures checked against what a real EC2 client sends: botocore's own EC2 client
signs each request (Version 4, or 2 where asked), and its bytes are what the check sees."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from mallee.clc import auth
from mallee.clc.wire import Ec2Error

KEY, SECRET = "AKIAMALLEE0000000001", "s3cret/s3cret+s3cret/s3cret+s3cret/s3cret"
REGIONS = {"mallee"}
FORM = "application/x-www-form-urlencoded; charset=utf-8"


class Captured(Exception):
    """Raised from botocore's before-send hook: the request goes no further."""

    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def sent_by_client(
    signature_version: str = "v4", region: str = "mallee", secret: str = SECRET
) -> auth.Received:
    """A DescribeInstances request as botocore's EC2 client signs and sends it."""
    client = botocore.session.Session().create_client(
        "ec2",
        region_name=region,
        endpoint_url="http://cloud.example.org:8773",
        aws_access_key_id=KEY,
        aws_secret_access_key=secret,
        config=Config(signature_version=signature_version, retries={"max_attempts": 1}),
    )

    def capture(request: Any, **_: Any) -> None:
        raise Captured(request)

    client.meta.events.register("before-send.ec2", capture)
    with pytest.raises(Captured) as caught:
        client.describe_instances(InstanceIds=["i-0123456789abcdef0"], MaxResults=5)
    request = caught.value.request
    url = urlsplit(request.url)
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    headers = {
        k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    headers["host"] = url.netloc  # added on the wire by the HTTP library
    params = dict(parse_qsl(url.query)) | dict(parse_qsl(body.decode()))
    return auth.Received(request.method, url.path or "/", url.query, headers, body, params)


def secret_of(key_id: str) -> str | None:
    return SECRET if key_id == KEY else None


def check(request: auth.Received, now: datetime | None = None, accept_v2: bool = False) -> str:
    when = now or datetime.now(UTC)
    return auth.signer_of(request, secret_of, when, REGIONS, accept_v2)


def refused(request: auth.Received, now: datetime | None = None, **kw: Any) -> Ec2Error:
    with pytest.raises(Ec2Error) as caught:
        check(request, now, **kw)
    return caught.value


def test_a_request_signed_by_botocore_names_its_key() -> None:
    assert check(sent_by_client()) == KEY


def test_a_changed_body_does_not_verify() -> None:
    request = sent_by_client()
    tampered = request.body.replace(b"MaxResults=5", b"MaxResults=6")
    assert tampered != request.body
    error = refused(replace(request, body=tampered))
    assert (error.code, error.status) == ("AuthFailure", 401)


def test_a_wrong_secret_and_an_unknown_key_look_alike() -> None:
    wrong_secret = refused(sent_by_client(secret="not-the-secret"))
    request = sent_by_client()
    with pytest.raises(Ec2Error) as caught:  # a cloud that has no such key
        auth.signer_of(request, lambda _key: None, datetime.now(UTC), REGIONS)
    assert (wrong_secret.code, wrong_secret.status) == ("AuthFailure", 401)
    assert (caught.value.code, caught.value.message) == (wrong_secret.code, wrong_secret.message)
    assert SECRET not in wrong_secret.message


def test_a_region_the_cloud_does_not_have_is_named() -> None:
    error = refused(sent_by_client(region="us-east-1"))
    assert (error.code, error.status) == ("AuthFailure", 401)
    assert "'us-east-1'" in error.message and "mallee" in error.message


def test_fifteen_minutes_either_way() -> None:
    request = sent_by_client()
    now = datetime.now(UTC)
    assert check(request, now + timedelta(minutes=14)) == KEY
    assert check(request, now - timedelta(minutes=14)) == KEY
    for skew in (timedelta(minutes=16), -timedelta(minutes=16)):
        error = refused(request, now + skew)
        assert (error.code, error.status) == ("RequestExpired", 400)


def test_an_unsigned_request() -> None:
    request = sent_by_client()
    headers = {k: v for k, v in request.headers.items() if k != "authorization"}
    error = refused(replace(request, headers=headers))
    assert (error.code, error.status) == ("MissingAuthenticationToken", 403)


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ("AWS4-HMAC-SHA1 Credential=x", "algorithm"),
        ("AWS4-HMAC-SHA256 Credential=x/y, SignedHeaders=host, Signature=00", "Credential"),
        ("AWS4-HMAC-SHA256 Credential=K/20261128/mallee/ec2/aws4_request", "lacks"),
    ],
)
def test_a_malformed_authorization(authorization: str, says: str) -> None:
    request = sent_by_client()
    error = refused(replace(request, headers={**request.headers, "authorization": authorization}))
    assert (error.code, error.status) == ("IncompleteSignature", 400)
    assert says in error.message


def signed_with_digest(digest: str) -> auth.Received:
    """A request whose client signed an X-Amz-Content-SHA256 header claiming ``digest``."""
    body = b"Action=DescribeKeyPairs&Version=2016-11-15"
    request = AWSRequest(
        method="POST",
        url="http://cloud.example.org:8773/",
        data=body,
        headers={"Content-Type": FORM, "X-Amz-Content-SHA256": digest},
    )
    SigV4Auth(Credentials(KEY, SECRET), "ec2", "mallee").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "cloud.example.org:8773"
    assert "x-amz-content-sha256" in headers["authorization"]
    return auth.Received("POST", "/", "", headers, body, dict(parse_qsl(body.decode())))


def test_a_signed_body_digest_must_be_the_bodys() -> None:
    body = b"Action=DescribeKeyPairs&Version=2016-11-15"
    assert check(signed_with_digest(hashlib.sha256(body).hexdigest())) == KEY
    error = refused(signed_with_digest(hashlib.sha256(b"another body").hexdigest()))
    assert (error.code, error.status) == ("IncompleteSignature", 400)


def test_a_body_needs_its_content_type_signed() -> None:
    """Unsigned, the content type could be changed on the way and the body read as
    something else (or not at all)."""
    request = sent_by_client()
    scheme, _, fields = request.headers["authorization"].partition(" ")
    unsigned_type = fields.replace("content-type;", "")
    assert unsigned_type != fields
    error = refused(
        replace(request, headers={**request.headers, "authorization": f"{scheme} {unsigned_type}"})
    )
    assert (error.code, error.status) == ("IncompleteSignature", 400)
    assert "content-type" in error.message


def test_a_signature_that_is_not_ascii_is_refused_not_a_crash() -> None:
    request = sent_by_client()
    authorization = request.headers["authorization"].rsplit("Signature=", 1)[0] + "Signature=é"
    error = refused(replace(request, headers={**request.headers, "authorization": authorization}))
    assert (error.code, error.status) == ("AuthFailure", 401)


def test_signature_version_2_only_where_enabled() -> None:
    request = sent_by_client("v2")
    assert "authorization" not in request.headers and request.params["SignatureVersion"] == "2"
    assert check(request, accept_v2=True) == KEY
    error = refused(request)
    assert (error.code, error.status) == ("AuthFailure", 401)
    assert "Version 4" in error.message
    tampered = dict(request.params, MaxResults="6")
    assert refused(replace(request, params=tampered), accept_v2=True).code == "AuthFailure"
