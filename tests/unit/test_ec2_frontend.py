"""How the EC2 front end reads a request's parameters before anything else."""

from __future__ import annotations

import pytest

from mallee.clc.frontend import RawRequest, received
from mallee.clc.wire import Ec2Error

FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}


def raw(query: bytes = b"", body: bytes = b"", headers: dict[str, str] = FORM) -> RawRequest:
    return RawRequest("POST", "/", query, headers, body)


def refused(request: RawRequest) -> Ec2Error:
    with pytest.raises(Ec2Error) as caught:
        received(request)
    return caught.value


def test_query_and_form_together() -> None:
    request = received(raw(b"Action=DeleteKeyPair", b"Version=2016-11-15&KeyName=a%20b"))
    assert request.params == {"Action": "DeleteKeyPair", "Version": "2016-11-15", "KeyName": "a b"}
    assert request.query == "Action=DeleteKeyPair"


@pytest.mark.parametrize(
    ("query", "body"),
    [
        (b"KeyName=keep&KeyName=victim", b""),  # a signature covers both orders alike
        (b"KeyName=keep", b"KeyName=victim"),
    ],
)
def test_a_name_given_twice_is_refused(query: bytes, body: bytes) -> None:
    error = refused(raw(query, body))
    assert (error.code, error.status) == ("InvalidParameterValue", 400)
    assert "KeyName is given more than once" in error.message


def test_a_body_that_is_no_form_is_refused_not_ignored() -> None:
    error = refused(
        raw(body=b'{"Action": "DeleteKeyPair"}', headers={"content-type": "application/json"})
    )
    assert (error.code, error.status) == ("InvalidParameterValue", 400)
    assert "application/json" in error.message


def test_bytes_that_are_not_utf8() -> None:
    assert refused(raw(b"KeyName=%ff\xff")).code == "MalformedQueryString"
