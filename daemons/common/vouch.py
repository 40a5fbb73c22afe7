"""How a CC vouches for the instance asking the metadata service when the CLC cannot
see the instance's own address (the CLC on another host, the private subnet not routed
back to the CC): the CC's metadata proxy adds the address it received the request
from, signed with a secret the CC and the CLC share (``metadata_proxy_secret``), as
neutron's metadata proxy does for nova. The CLC believes a signed address and refuses
an unsigned or wrongly signed one."""

from __future__ import annotations

import hashlib
import hmac

ADDRESS_HEADER = "X-Mallee-Instance-Address"
SIGNATURE_HEADER = "X-Mallee-Instance-Signature"
# IMDSv2's headers, which the CLC's metadata service reads and a CC's proxy relays
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


def sign(secret: str, address: str) -> str:
    return hmac.new(secret.encode(), address.encode(), hashlib.sha256).hexdigest()


def vouched(secret: str, address: str, signature: str) -> bool:
    """Whether ``signature`` is the one ``secret`` gives ``address`` (never, without a
    secret: a CLC that shares none believes no proxy)."""
    return bool(secret) and hmac.compare_digest(sign(secret, address), signature)
