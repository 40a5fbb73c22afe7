"""Signed EC2 requests straight into the CLC's front end (no HTTP), as botocore writes
them and reads their answers: for unit tests of the actions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mallee.clc import users, wire
from mallee.clc.frontend import Ec2Frontend, RawRequest

HOST = "cloud.example.org:8773"


def signed(fields: dict[str, str], credentials: users.Credentials) -> RawRequest:
    """A POST of these form fields, signed with Signature Version 4 by botocore."""
    body = urlencode(fields).encode()
    request = AWSRequest(
        method="POST",
        url=f"http://{HOST}/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    keys = Credentials(credentials.access_key_id, credentials.secret_access_key)
    SigV4Auth(keys, "ec2", "mallee").add_auth(request)
    headers = {k.lower(): str(v) for k, v in request.headers.items()} | {"host": HOST}
    return RawRequest("POST", "/", b"", headers, body)


def call(
    frontend: Ec2Frontend, credentials: users.Credentials, action: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    """``action`` with ``params`` as boto3 takes them; the status and what botocore
    reads of the answer (``Error`` for a refusal)."""
    model = wire.operation(action)
    request = create_serializer("ec2").serialize_to_request(params, model)
    fields = {k: str(v) for k, v in request["body"].items()}
    answer = frontend.handle(signed(fields, credentials), "req-test")
    response = {"body": answer.body, "headers": {}, "status_code": answer.status}
    return answer.status, dict(create_parser("ec2").parse(response, model.output_shape))


def new_public_key() -> bytes:
    """A new ed25519 public key in OpenSSH's form, as ImportKeyPair takes it."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
