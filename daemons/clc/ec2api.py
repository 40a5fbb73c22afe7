"""The EC2 Query API's routes: at ``/``, and at ``/services/Eucalyptus`` for older tools.

Callers are users, who prove who they are by signing; the front end does the rest.
"""

from __future__ import annotations

import flask

from mallee.clc.frontend import Ec2Frontend, RawRequest

bp = flask.Blueprint("ec2", __name__)


@bp.route("/", methods=["GET", "POST"])
@bp.route("/services/Eucalyptus", methods=["GET", "POST"])
@bp.route("/services/Eucalyptus/", methods=["GET", "POST"])
def ec2() -> flask.Response:
    request = flask.request
    raw = RawRequest(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers={name.lower(): value for name, value in request.headers.items()},
        body=request.get_data(),
    )
    frontend: Ec2Frontend = flask.current_app.extensions["mallee.clc"]
    request_id = flask.g.request_id
    answer = frontend.handle(raw, request_id)
    response = flask.Response(answer.body, answer.status, mimetype="text/xml")
    response.headers["x-amzn-RequestId"] = request_id
    return response
