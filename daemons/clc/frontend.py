"""The EC2 front end (the seed's "Client Interface"): who signed the request, which
action it is, its parameters, DryRun, then the action in one database transaction.

Whatever goes wrong answers EC2's error document with EC2's code and status; an error
mallee did not foresee is ``InternalError`` naming the request id to look for in the
log, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from mallee.clc import auth, users, wire
from mallee.clc.actions import ACTIONS, Cloud, Context
from mallee.clc.db import Sessions
from mallee.common.errors import MalleeError

logger = logging.getLogger(__name__)


FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class RawRequest:
    """A request as it arrived, header names in lower case."""

    method: str
    path: str
    query: bytes
    headers: Mapping[str, str]
    body: bytes


def received(raw: RawRequest) -> auth.Received:
    """The request with its parameters: the query's and the form body's together.

    A name given twice is refused: the signature covers both orders of a repeated name
    alike, so which value counts must not depend on it. A body that is not a form is
    refused rather than ignored.
    """
    try:
        query = raw.query.decode("utf-8")
        body = raw.body.decode("utf-8")
    except UnicodeDecodeError:
        raise wire.Ec2Error("MalformedQueryString", "The request is not UTF-8") from None
    content_type = raw.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and content_type != FORM:
        raise wire.Ec2Error(
            "InvalidParameterValue", f"The body must be {FORM}, not {content_type or 'untyped'}"
        )
    pairs = parse_qsl(query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
    params: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:  # no EC2 text has one; PostgreSQL takes none
            raise wire.Ec2Error("InvalidParameterValue", f"The parameter {name!r} holds a NUL")
        if name in params:
            raise wire.Ec2Error(
                "InvalidParameterValue", f"The parameter {name} is given more than once"
            )
        params[name] = value
    return auth.Received(raw.method, raw.path, query, raw.headers, raw.body, params)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class Ec2Frontend:
    def __init__(
        self,
        sessions: Sessions,
        cloud: Cloud,
        accept_signature_v2: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.cloud = cloud
        self.accept_signature_v2 = accept_signature_v2
        self.clock = clock

    def handle(self, raw: RawRequest, request_id: str) -> Answer:
        """``request_id`` is the one mallee's logs carry; EC2's answer names it too."""
        try:
            return Answer(200, self._serve(received(raw), request_id))
        except MalleeError as e:
            logger.info("refused: %s: %s", e.code, e.message)
            return Answer(e.status, wire.serialize_error(e.code, e.message, request_id))
        except Exception:
            logger.exception("unexpected error")
            message = f"We encountered an internal error; the cloud's log has request {request_id}"
            return Answer(500, wire.serialize_error("InternalError", message, request_id))

    def _serve(self, request: auth.Received, request_id: str) -> bytes:
        """One transaction from the signature check to the action's last write: a
        refusal anywhere rolls all of it back."""
        action = request.params.get("Action", "")
        # EC2's names say which actions write; a reboot only asks the instances' CCs
        read_only = action.startswith(("Describe", "Get")) or action == "RebootInstances"
        with (self.sessions.read if read_only else self.sessions.write).begin() as db:
            key_id = auth.signer_of(
                request,
                lambda key: users.secret_of(db, key),
                self.clock(),
                {self.cloud.region},
                self.accept_signature_v2,
            )
            caller = users.caller(db, key_id)
            if not action:
                raise wire.Ec2Error(
                    "MissingAction", "The request must contain the parameter Action"
                )
            model = wire.operation(action)
            handler = ACTIONS.get(action)
            if handler is None:
                raise wire.invalid_action(action)
            params = wire.parse_request(model, request.params)
            if params.pop("DryRun", False):
                raise wire.Ec2Error(
                    "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
                )
            endpoint = request.headers.get("host", "")
            context = Context(db, caller, self.cloud, endpoint)
            output = handler(context, params)
        logger.info("%s by %s", action, caller.user)
        for then in context.after_commit:
            then()
        return wire.serialize_response(model, output, request_id)
