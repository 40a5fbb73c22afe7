"""The EC2 Query API's routes: at ``/``, and at ``/services/Eucalyptus`` for older tools.

Callers are users, who prove who they are by signing; the front end does the rest.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import flask

from mallee.clc.auth import Received
from mallee.clc.frontend import Ec2Frontend

bp = flask.Blueprint("ec2", __name__)
FORM = "application/x-www-form-urlencoded"


@bp.route("/", methods=["GET", "POST"])
@bp.route("/services/Eucalyptus", methods=["GET", "POST"])
@bp.route("/services/Eucalyptus/", methods=["GET", "POST"])
def ec2() -> flask.Response:
    request = flask.request
    body = request.get_data()
    params = dict(parse_qsl(request.query_string.decode(), keep_blank_values=True))
    if (request.mimetype or FORM) == FORM:
        params |= dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
    received = Received(
        method=request.method,
        path=request.path,
        query=request.query_string.decode(),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
        params=params,
    )
    frontend: Ec2Frontend = flask.current_app.extensions["mallee.clc"]
    answer = frontend.handle(received, flask.g.request_id)
    response = flask.Response(answer.body, answer.status, mimetype="text/xml")
    response.headers["x-amzn-RequestId"] = answer.request_id
    return response
