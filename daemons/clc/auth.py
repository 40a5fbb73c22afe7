"""Who signed an EC2 request, checked by recomputing the signature.

Signature Version 4 is recomputed with botocore's own signer over exactly what arrived:
the method, the path, the raw query string, the body, and only the headers the client
names in ``SignedHeaders``, with the client's ``X-Amz-Date``. (Its ``add_auth`` is never
used here: it stamps the current time and signs every header.) Signature Version 2 (form
fields ``AWSAccessKeyId``, ``SignatureVersion=2``, ``Signature``; libcloud's Eucalyptus
driver still sends it) is accepted only where the cloud enables it. Signatures are
compared in constant time; a secret key is never logged nor named in an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV2Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mallee.clc.wire import Ec2Error

SERVICE = "ec2"
# EC2's own window: a request dated more than 15 minutes from now is refused.
MAX_SKEW = timedelta(minutes=15)
V4_ALGORITHM = "AWS4-HMAC-SHA256"
V4_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

SecretOf = Callable[[str], str | None]  # access key id → secret key (None: no such key)


@dataclass(frozen=True)
class Received:
    """A request as it arrived: headers with lower-case names, the raw query string,
    the body's bytes, and its parameters (query and form together)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str]


def signer_of(
    request: Received,
    secret_of: SecretOf,
    now: datetime,
    regions: Collection[str],
    accept_v2: bool = False,
) -> str:
    """The access key id whose secret signed ``request``, or an Ec2Error saying why
    not: no signature (MissingAuthenticationToken), a malformed one
    (IncompleteSignature), a stale one (RequestExpired), or one that does not verify
    or names an unknown key (AuthFailure: the caller is not told which)."""
    if "authorization" in request.headers:
        return _verify_v4(request, secret_of, now, regions)
    if "Signature" in request.params:
        if not accept_v2:
            raise Ec2Error(
                "AuthFailure",
                "Signature Version 2 is not accepted by this cloud: sign with Version 4",
                401,
            )
        return _verify_v2(request, secret_of, now)
    if "X-Amz-Signature" in request.params:
        raise Ec2Error(
            "IncompleteSignature", "Presigned URLs are not accepted: sign the request", 400
        )
    raise Ec2Error(
        "MissingAuthenticationToken",
        "The request must contain a valid access key id: it is not signed",
        403,
    )


def _auth_failure() -> Ec2Error:
    return Ec2Error(
        "AuthFailure", "AWS was not able to validate the provided access credentials", 401
    )


def _check_time(when: datetime, now: datetime) -> None:
    if abs(now - when) > MAX_SKEW:
        raise Ec2Error(
            "RequestExpired",
            f"Request has expired: it is dated {when:%Y-%m-%dT%H:%M:%SZ}, and this "
            f"cloud's time is {now:%Y-%m-%dT%H:%M:%SZ} (15 minutes allowed either way)",
            400,
        )


def _verify_v4(
    request: Received, secret_of: SecretOf, now: datetime, regions: Collection[str]
) -> str:
    fields = _v4_fields(request.headers["authorization"])
    try:
        key_id, day, region, service, terminal = fields["Credential"].split("/")
    except ValueError:
        raise _incomplete("its Credential is not KEY/DATE/REGION/SERVICE/aws4_request") from None
    if service != SERVICE or terminal != "aws4_request":
        raise _incomplete(f"its credential scope names service {service!r}, not {SERVICE!r}")
    if region not in regions:
        raise Ec2Error(
            "AuthFailure",
            f"This cloud's region is {' or '.join(sorted(regions))}, not {region!r}: "
            "configure the client with it",
            401,
        )
    stamp = request.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, V4_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete("X-Amz-Date is missing or not of the form YYYYMMDDTHHMMSSZ") from None
    if stamp[:8] != day:
        raise _incomplete("its credential scope's date is not X-Amz-Date's")
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        raise _incomplete("SignedHeaders must include host and x-amz-date")
    if request.body and "content-type" not in signed:  # it decides how the body is read
        raise _incomplete("SignedHeaders must include content-type when there is a body")
    if missing := [h for h in signed if h not in request.headers]:
        raise _incomplete(f"signed headers {missing} are not in the request")
    claimed_digest = request.headers.get("x-amz-content-sha256")
    if claimed_digest is not None and claimed_digest != hashlib.sha256(request.body).hexdigest():
        raise _incomplete("X-Amz-Content-SHA256 is not the body's digest")
    _check_time(when, now)
    secret = secret_of(key_id)
    if secret is None:
        raise _auth_failure()

    url = f"http://{request.headers['host']}{request.path}"
    if request.query:
        url += f"?{request.query}"
    rebuilt = AWSRequest(
        method=request.method,
        url=url,
        data=request.body,
        headers={name: request.headers[name] for name in signed},
    )
    rebuilt.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key_id, secret), SERVICE, region)
    if signer.signed_headers(signer.headers_to_sign(rebuilt)) != ";".join(sorted(signed)):
        raise _incomplete("it signs headers this cloud does not take part in signatures")
    expected = signer.signature(
        signer.string_to_sign(rebuilt, signer.canonical_request(rebuilt)), rebuilt
    )
    if not _same(expected, fields["Signature"]):
        raise _auth_failure()
    return key_id


def _same(expected: str, given: str) -> bool:
    """Constant-time comparison, also of a signature that is not ASCII."""
    return hmac.compare_digest(expected.encode(), given.encode(errors="replace"))


def _v4_fields(authorization: str) -> dict[str, str]:
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != V4_ALGORITHM:
        raise _incomplete(f"its algorithm is {algorithm!r}, not {V4_ALGORITHM}")
    fields = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    if missing := [f for f in ("Credential", "SignedHeaders", "Signature") if not fields.get(f)]:
        raise _incomplete(f"its Authorization header lacks {', '.join(missing)}")
    return fields


def _incomplete(why: str) -> Ec2Error:
    return Ec2Error("IncompleteSignature", f"The request signature is malformed: {why}", 400)


def _verify_v2(request: Received, secret_of: SecretOf, now: datetime) -> str:
    params = request.params
    if params.get("SignatureVersion") != "2" or params.get("SignatureMethod") not in (
        "HmacSHA256",
        None,
    ):
        raise _incomplete("only SignatureVersion 2 with HmacSHA256 is taken")
    key_id = params.get("AWSAccessKeyId", "")
    stamp = params.get("Timestamp")
    if not key_id or not stamp or "Expires" in params:
        raise _incomplete("AWSAccessKeyId and Timestamp (not Expires) are required")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise _incomplete("Timestamp is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    _check_time(when, now)
    secret = secret_of(key_id)
    if secret is None:
        raise _auth_failure()
    host = request.headers.get("host", "")
    rebuilt = AWSRequest(method=request.method, url=f"http://{host}{request.path}")
    _, expected = SigV2Auth(Credentials(key_id, secret)).calc_signature(rebuilt, params)
    if not _same(expected, params["Signature"]):
        raise _auth_failure()
    return key_id
