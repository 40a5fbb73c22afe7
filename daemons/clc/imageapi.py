"""The image store's route: NCs fetch the files of registered images by digest (over
mutual TLS, role "nc"), and check the digest themselves."""

from __future__ import annotations

import flask

from mallee.clc import images
from mallee.clc.frontend import Ec2Frontend
from mallee.common.errors import NotFound

bp = flask.Blueprint("images", __name__, url_prefix="/v1/images")


@bp.get("/sha256/<hex_digest>")
def image_file(hex_digest: str) -> flask.Response:
    frontend: Ec2Frontend = flask.current_app.extensions["mallee.clc"]
    digest = f"sha256:{hex_digest}"
    with frontend.sessions.read.begin() as db:
        registered = images.served(db, digest)
    path = frontend.cloud.store.path_of(digest) if registered else None
    if path is None:
        raise NotFound(f"no registered image has the digest {digest[:80]}")
    return flask.send_file(path, mimetype="application/octet-stream", conditional=True)
