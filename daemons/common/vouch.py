"""How a CC vouches for the instance asking the metadata service when the CLC cannot
see the instance's own address (the CLC on another host, the private subnet not routed
back to the CC): the CC's metadata proxy adds the address it received the request
from, and a signature of that address, the request's method and path and the time,
under a secret the CC and the CLC share (``metadata_proxy_secret``), as neutron's
metadata proxy does for nova. The CLC believes a signature made within ``WINDOW_S``
of its own clock, and refuses an unsigned, wrongly signed or stale one: a vouch seen
on the network is good for that request only, for seconds."""

from __future__ import annotations

import hashlib
import hmac
import time

ADDRESS_HEADER = "X-Mallee-Instance-Address"
SIGNATURE_HEADER = "X-Mallee-Instance-Signature"
# IMDSv2's headers, which the CLC's metadata service reads and a CC's proxy relays
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


WINDOW_S = 30  # how far a vouch's time may be from the CLC's (clocks of one site)


def sign(secret: str, address: str, method: str, path: str, at: float | None = None) -> str:
    """The signature header's value: ``TIME:HMAC``."""
    stamp = int(time.time() if at is None else at)
    message = f"{stamp}|{method}|{path}|{address}".encode()
    return f"{stamp}:{hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()}"


def vouched(secret: str, address: str, method: str, path: str, signature: str) -> bool:
    """Whether ``signature`` is one ``secret`` gave this request for ``address``
    within the window (never, without a secret: a CLC that shares none believes no
    proxy)."""
    stamp, _, _ = signature.partition(":")
    if not secret or not stamp.isdigit() or abs(time.time() - int(stamp)) > WINDOW_S:
        return False
    return hmac.compare_digest(sign(secret, address, method, path, int(stamp)), signature)
