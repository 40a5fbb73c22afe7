"""The internal RPC convention: JSON over HTTP(S), errors as ``{"error": {...}}``.

Server side, ``init_app`` gives a daemon's Flask app request ids, the body size limit
and the one error renderer, and ``register_blueprint`` serves each blueprint only to the
callers it names, on the ports it names. Client side, ``RpcClient`` adds timeouts,
retries that are safe to repeat, the caller's request id, and turns error bodies back
into types.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import flask
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.retry import Retry
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import NotFound as RouteNotFound

from mallee.common import log, tls
from mallee.common.errors import (
    ClientCertificateRequired,
    MalformedRequest,
    MalleeError,
    PeerNotAllowed,
)
from mallee.common.metrics import Metrics
from mallee.common.openapi import OpenApiSpec

logger = logging.getLogger(__name__)

# The largest request body a daemon reads. Internal calls carry instance descriptions,
# never images; the limit keeps one caller from filling a daemon's memory.
MAX_REQUEST_BYTES = 1 << 20
# A larger body of announced length up to this is read and dropped before the 413: most
# clients (requests, RpcClient) send the whole body before they read the answer, and
# would find the connection closed under them (gunicorn drains 64 KiB at most) instead
# of seeing it. Bodies beyond this find the connection closed.
DISCARD_BYTES = 64 << 20


class RequestTooLarge(MalleeError):
    code = "RequestTooLarge"
    status = 413

    def __init__(self) -> None:
        super().__init__(f"the request body is larger than {MAX_REQUEST_BYTES} bytes")


def init_app(
    app: flask.Flask, spec: OpenApiSpec | None, tls_enabled: bool, metrics: Metrics | None = None
) -> None:
    """The plumbing every daemon shares. Who may call which route is each blueprint's
    own (``register_blueprint``); of the routes here, ``/healthz`` and
    ``/v1/openapi.json`` (a published document) are open to anyone who reaches a port,
    ``/metrics`` to any certificate of the cloud (monitoring shows the daemon's load)."""
    app.extensions["mallee.openapi"] = spec
    app.extensions["mallee.tls"] = tls_enabled
    # A body of unannounced length (chunked) is read no further than this: one byte more
    # than accepted, so that json_body can tell a body at the limit from one beyond it.
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES + 1

    @app.before_request
    def start_request() -> None:
        request_id = log.taken_or_new(flask.request.headers.get(log.REQUEST_ID_HEADER))
        flask.g.request_id = request_id
        flask.g.request_id_token = log.current_request_id.set(request_id)
        # Refused before any route runs, whether or not it would read the body.
        length = flask.request.content_length or 0
        if length > MAX_REQUEST_BYTES:
            # Drained only for callers of the cloud: a stranger makes it read nothing.
            if length <= DISCARD_BYTES and _of_the_cloud():
                _discard(flask.request.environ["wsgi.input"], length)
            raise RequestTooLarge()

    @app.after_request
    def add_request_id(response: flask.Response) -> flask.Response:
        response.headers[log.REQUEST_ID_HEADER] = flask.g.get("request_id", "-")
        return response

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        token = flask.g.pop("request_id_token", None)
        if token is not None:
            log.current_request_id.reset(token)

    @app.errorhandler(MalleeError)
    def render_error(error: MalleeError) -> tuple[flask.Response, int]:
        return _error_body(error.code, error.message), error.status

    @app.errorhandler(HTTPException)
    def render_http_error(error: HTTPException) -> tuple[flask.Response, int]:
        if isinstance(error, RequestEntityTooLarge):  # a chunked body over the limit
            return render_error(RequestTooLarge())
        status = error.code or 500
        return _error_body(type(error).__name__, error.description or ""), status

    @app.errorhandler(Exception)
    def render_unexpected(error: Exception) -> tuple[flask.Response, int]:
        # Its words may name host paths: they go to the log, the caller gets the type.
        logger.exception("unhandled error")
        message = (
            f"the daemon failed ({type(error).__name__}); its log has the details under "
            f"request {flask.g.get('request_id')}"
        )
        return _error_body("InternalError", message), 500

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if spec is not None:  # a daemon with an internal JSON API publishes its contract

        @app.get("/v1/openapi.json")
        def openapi_document() -> dict[str, Any]:
            return spec.document

    if metrics is not None:

        @app.get("/metrics")
        def render_metrics() -> flask.Response:
            _require_role(tls.ROLES)
            return flask.Response(metrics.render(), mimetype="text/plain")


def register_blueprint(
    app: flask.Flask,
    bp: flask.Blueprint,
    *,
    roles: Collection[str],
    ports: Collection[int] | None = None,
) -> None:
    """Serve ``bp`` only to callers whose certificate's role is in ``roles``, and only on
    ``ports`` (every port the daemon listens on when None). On another port its routes
    answer 404, as if they did not exist there. The port is the listening socket's
    (gunicorn's ``SERVER_PORT``), not the one the caller wrote in ``Host``."""
    app.register_blueprint(bp)
    allowed = frozenset(roles)
    served_on = None if ports is None else frozenset(str(p) for p in ports)

    @app.before_request
    def check_caller() -> None:
        if bp.name not in flask.request.blueprints:
            return
        if served_on is not None and flask.request.environ.get("SERVER_PORT") not in served_on:
            raise RouteNotFound()
        _require_role(allowed)


def _discard(stream: Any, length: int) -> None:
    while length > 0 and (piece := stream.read(min(length, 1 << 16))):
        length -= len(piece)


def _of_the_cloud() -> bool:
    """Whether the caller shows a certificate of the cloud (everyone, without TLS)."""
    if not flask.current_app.extensions["mallee.tls"]:
        return True
    return tls.peer_role(flask.request.environ) is not None


def _require_role(allowed: Collection[str]) -> None:
    """Refuse the request unless its client certificate's role is in ``allowed``.
    Without TLS (loopback development) nobody has a role and everyone is served."""
    if not flask.current_app.extensions["mallee.tls"]:
        return
    role = tls.peer_role(flask.request.environ)
    if role is None:
        raise ClientCertificateRequired("a client certificate of the cloud is required")
    if role not in allowed:
        raise PeerNotAllowed(
            f"callers of role {role!r} are not served here (allowed: {sorted(allowed)})"
        )


def _error_body(code: str, message: str) -> flask.Response:
    return flask.jsonify(
        {"error": {"code": code, "message": message, "request_id": flask.g.get("request_id")}}
    )


def json_body(schema: str) -> dict[str, Any]:
    """The request's JSON object, validated against the daemon's OpenAPI ``schema``."""
    if len(flask.request.get_data()) > MAX_REQUEST_BYTES:
        raise RequestTooLarge()
    data = flask.request.get_json(silent=True)
    if data is None:
        raise MalformedRequest("the body is not valid JSON (Content-Type: application/json)")
    spec: OpenApiSpec = flask.current_app.extensions["mallee.openapi"]
    spec.validate(schema, data)
    assert isinstance(data, dict)
    return data


def query_list(name: str, schema: str) -> list[str]:
    """The values of query parameter ``name``, each validated against ``schema``."""
    spec: OpenApiSpec = flask.current_app.extensions["mallee.openapi"]
    values = flask.request.args.getlist(name)
    for value in values:
        spec.validate(schema, value, where=name)
    return values


def path_value(schema: str, value: str) -> str:
    """A value taken from the request's path, validated against ``schema``."""
    spec: OpenApiSpec = flask.current_app.extensions["mallee.openapi"]
    spec.validate(schema, value, where="the path")
    return value


@dataclass(frozen=True)
class ClientTLS:
    ca_cert: str
    cert: str
    key: str


class RemoteError(MalleeError):
    """An error another daemon answered, with its code and status kept."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unreachable(MalleeError):
    """No answer: refused, timed out, or TLS failed. ``maybe_delivered`` is False only
    when the request surely never reached the peer (no connection was made), so that
    even a call that is not safe to repeat may be sent elsewhere."""

    code = "Unreachable"
    status = 502

    def __init__(self, message: str, maybe_delivered: bool = True) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


def _never_connected(error: requests.RequestException) -> bool:
    if isinstance(error, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if isinstance(error, requests.ConnectionError) and error.args:
        reason = getattr(error.args[0], "reason", None)
        return isinstance(reason, NewConnectionError | ConnectTimeoutError)
    return False


class RpcClient:
    """A client of one daemon's internal API."""

    # Retried on connection errors always (nothing was sent), on read errors and 502-504
    # only for methods that are safe to repeat.
    IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})

    def __init__(
        self,
        base_url: str,
        tls_files: ClientTLS | None = None,
        timeout: tuple[float, float] = (3.05, 30.0),
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=(502, 503, 504),
            allowed_methods=self.IDEMPOTENT,
            backoff_factor=0.2,
            raise_on_status=False,
        )
        self.session.mount(self.base_url, HTTPAdapter(max_retries=retry, pool_maxsize=32))
        # Internal calls go straight to the peer and trust only the cloud CA: no proxy
        # or CA bundle from the environment (REQUESTS_CA_BUNDLE would replace ours).
        self.session.trust_env = False
        if tls_files is not None:
            self.session.verify = tls_files.ca_cert
            self.session.cert = (tls_files.cert, tls_files.key)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        request_id = log.current_request_id.get()
        if request_id == "-":
            request_id = log.new_request_id()
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                timeout=timeout or self.timeout,
                headers={log.REQUEST_ID_HEADER: request_id},
            )
        except requests.RequestException as e:
            raise Unreachable(
                f"{method} {self.base_url}{path}: {e}", not _never_connected(e)
            ) from e
        if response.ok:
            try:
                return response.json()
            except ValueError:
                raise RemoteError(
                    502, "BadAnswer", f"{method} {self.base_url}{path}: the answer is not JSON"
                ) from None
        try:
            error = response.json()["error"]
            raise RemoteError(response.status_code, error["code"], error["message"])
        except (ValueError, KeyError, TypeError):
            raise RemoteError(
                response.status_code, "HttpError", response.text[:500] or response.reason
            ) from None
