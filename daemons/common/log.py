"""Logging with the request id on every line.

The id travels between daemons in the ``X-Mallee-Request-Id`` header; a contextvar holds
it for the thread serving the request, so every hop logs the same id for one user call.
Background work (the NC monitor) logs ``-``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import sys

REQUEST_ID_HEADER = "X-Mallee-Request-Id"
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default="-"
)


# What a caller's id may look like: it is written into logs and answers as it came.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def taken_or_new(given: str | None) -> str:
    """The caller's request id if it is a plain token, else a new one (an id with line
    breaks or markup would forge log lines or break an XML answer)."""
    if given and _WELL_FORMED.fullmatch(given):
        return given
    return new_request_id()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


def setup(level: str) -> None:
    """Send the root logger to stderr with the request-id format (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if getattr(handler, "mallee", False):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.mallee = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
