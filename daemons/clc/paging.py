"""EC2's paging (``MaxResults``, ``NextToken``) over a listing already filtered: a page
of at most MaxResults items, and an opaque token that asks for the rest."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from mallee.clc.wire import Ec2Error

Item = TypeVar("Item")


def page(
    items: list[Item], params: dict[str, Any], smallest: int = 5, largest: int = 1000
) -> tuple[list[Item], str | None]:
    """The page the request asks for, and the token of the next (None after the last)."""
    size, token = params.get("MaxResults"), params.get("NextToken")
    if size is None and not token:
        return items, None
    if size is not None and not smallest <= size <= largest:
        raise Ec2Error(
            "InvalidParameterValue", f"MaxResults must be between {smallest} and {largest}"
        )
    start = _offset(token) if token else 0
    end = start + (size or largest)
    return items[start:end], _token(end) if end < len(items) else None


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"mallee:{offset}".encode()).decode()


def _offset(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        offset = int(text.removeprefix("mallee:")) if text.startswith("mallee:") else -1
    except (binascii.Error, UnicodeError, ValueError):
        offset = -1
    if offset < 0:
        raise Ec2Error("InvalidParameterValue", f"Invalid NextToken: {token[:64]}")
    return offset
