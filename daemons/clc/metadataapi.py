"""The metadata service's routes (plain HTTP on ``[clc] metadata_port``): what
http://169.254.169.254/ answers guests, redirected here by their cluster, or asked for
them by their CC's metadata proxy."""

from __future__ import annotations

import flask
import netaddr
from netaddr import IPNetwork

from mallee.clc import metadata
from mallee.clc.frontend import Ec2Frontend
from mallee.common import vouch

bp = flask.Blueprint("metadata", __name__)


def _text(status: int, text: str) -> flask.Response:
    return flask.Response(text + "\n", status, mimetype="text/plain")


def _asker() -> str | None:
    """The address of the instance asking: the request's source, or the one a CC's
    metadata proxy vouches for (vouch.py), which must be a private address; None for a
    vouch the CLC cannot believe."""
    request = flask.request
    vouched_for = request.headers.get(vouch.ADDRESS_HEADER)
    if vouched_for is None:
        return request.remote_addr or ""
    config = flask.current_app.extensions["mallee.clc"].cloud.config
    signature = request.headers.get(vouch.SIGNATURE_HEADER, "")
    secret = config.metadata_proxy_secret
    if not vouch.vouched(secret, vouched_for, request.method, request.path, signature):
        return None
    if not netaddr.valid_ipv4(vouched_for) or vouched_for not in IPNetwork(config.private_subnet):
        return None
    return vouched_for


@bp.put("/latest/api/token")
def token() -> flask.Response:
    if "X-Forwarded-For" in flask.request.headers:  # EC2 refuses what came via a proxy
        return _text(403, "Forbidden")
    if (asker := _asker()) is None:
        return _text(403, "Forbidden")
    ttl = metadata.token_ttl(flask.request.headers.get(vouch.TTL_HEADER))
    if ttl is None:
        return _text(400, f"{vouch.TTL_HEADER} must be 1 to {metadata.MAX_TOKEN_TTL_S}")
    tokens: metadata.Tokens = flask.current_app.extensions["mallee.metadata"]
    issued = tokens.issue(asker, ttl)
    response = flask.Response(issued, 200, mimetype="text/plain")
    response.headers[vouch.TTL_HEADER] = str(ttl)
    return response


@bp.get("/", defaults={"path": ""})
@bp.get("/<path:path>")
def serve(path: str) -> flask.Response:
    if (address := _asker()) is None:
        return _text(403, "Forbidden")
    given = flask.request.headers.get(vouch.TOKEN_HEADER)
    tokens: metadata.Tokens = flask.current_app.extensions["mallee.metadata"]
    if given is not None and not tokens.valid(given, address):
        return _text(401, "Unauthorized")
    frontend: Ec2Frontend = flask.current_app.extensions["mallee.clc"]
    with frontend.sessions.read.begin() as db:
        config = frontend.cloud.config
        found = metadata.answer(db, address, path, config)
    return flask.Response(found.body, found.status, mimetype=found.content_type)
