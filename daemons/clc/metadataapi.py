"""The metadata service's routes (plain HTTP on ``[clc] metadata_port``): what
http://169.254.169.254/ answers guests, redirected here by their cluster."""

from __future__ import annotations

import flask

from mallee.clc import metadata
from mallee.clc.frontend import Ec2Frontend

bp = flask.Blueprint("metadata", __name__)
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def _text(status: int, text: str) -> flask.Response:
    return flask.Response(text + "\n", status, mimetype="text/plain")


@bp.put("/latest/api/token")
def token() -> flask.Response:
    if "X-Forwarded-For" in flask.request.headers:  # EC2 refuses what came via a proxy
        return _text(403, "Forbidden")
    ttl = metadata.token_ttl(flask.request.headers.get(TTL_HEADER))
    if ttl is None:
        return _text(400, f"{TTL_HEADER} must be 1 to {metadata.MAX_TOKEN_TTL_S}")
    tokens: metadata.Tokens = flask.current_app.extensions["mallee.metadata"]
    issued = tokens.issue(flask.request.remote_addr or "", ttl)
    response = flask.Response(issued, 200, mimetype="text/plain")
    response.headers[TTL_HEADER] = str(ttl)
    return response


@bp.get("/", defaults={"path": ""})
@bp.get("/<path:path>")
def serve(path: str) -> flask.Response:
    address = flask.request.remote_addr or ""
    given = flask.request.headers.get(TOKEN_HEADER)
    tokens: metadata.Tokens = flask.current_app.extensions["mallee.metadata"]
    if given is not None and not tokens.valid(given, address):
        return _text(401, "Unauthorized")
    frontend: Ec2Frontend = flask.current_app.extensions["mallee.clc"]
    with frontend.sessions.read.begin() as db:
        config = frontend.cloud.config
        found = metadata.answer(db, address, path, config)
    return flask.Response(found.body, found.status, mimetype=found.content_type)
