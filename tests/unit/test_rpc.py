"""The internal RPC convention, server and client: over real HTTP on loopback, and
through Flask's test client for who may call what (with the client certificate on a
real TLS socket, where gunicorn puts it)."""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask
import pytest
import requests
import yaml
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from mallee.common import log, rpc, tls
from mallee.common.errors import InstanceNotFound
from mallee.common.metrics import Metrics
from mallee.common.openapi import OpenApiSpec
from mallee.common.rpc import RemoteError, RpcClient, Unreachable

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "test", "version": "1"},
    "paths": {},
    "components": {
        "schemas": {
            "Echo": {
                "type": "object",
                "required": ["word"],
                "properties": {"word": {"type": "string", "maxLength": 5}},
            }
        }
    },
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Counter[str]]]:
    (tmp_path / "openapi.yaml").write_text(yaml.safe_dump(SPEC))
    app = flask.Flask(__name__)
    rpc.init_app(app, OpenApiSpec(tmp_path / "openapi.yaml"), False)
    calls: Counter[str] = Counter()

    @app.post("/echo")
    def echo() -> dict[str, Any]:
        return rpc.json_body("Echo")

    @app.get("/missing")
    def missing() -> dict[str, str]:
        raise InstanceNotFound("instance i-1 is not on this node")

    @app.get("/boom")
    def boom() -> dict[str, str]:
        raise FileNotFoundError("/var/lib/mallee/instances/i-1/domain.xml")

    @app.get("/request-id")
    def request_id() -> dict[str, str]:
        logging.getLogger("test").warning("seen")
        return {"id": log.current_request_id.get()}

    @app.route("/flaky", methods=["GET", "POST"])
    def flaky() -> tuple[dict[str, str], int]:
        calls[flask.request.method] += 1
        return ({"ok": "yes"}, 200) if calls[flask.request.method] > 2 else ({}, 503)

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", calls
    httpd.shutdown()


def test_body_is_validated_against_the_spec(server: tuple[str, Counter[str]]) -> None:
    client = RpcClient(server[0])
    assert client.call("POST", "/echo", {"word": "hi"}) == {"word": "hi"}
    with pytest.raises(RemoteError) as caught:
        client.call("POST", "/echo", {"word": "toolong"})
    assert (caught.value.status, caught.value.code) == (400, "MalformedRequest")
    assert caught.value.message.startswith("word: 'toolong' is too long")


def test_errors_keep_their_code(server: tuple[str, Counter[str]]) -> None:
    client = RpcClient(server[0], retries=0)
    with pytest.raises(RemoteError) as caught:
        client.call("GET", "/missing")
    assert (caught.value.status, caught.value.code) == (404, "InvalidInstanceID.NotFound")
    with pytest.raises(RemoteError) as caught:
        client.call("GET", "/no-such-route")
    assert (caught.value.status, caught.value.code) == (404, "NotFound")
    with pytest.raises(RemoteError) as caught:
        client.call("DELETE", "/echo")
    assert caught.value.status == 405
    with pytest.raises(RemoteError) as caught:
        client.call("GET", "/boom")
    assert (caught.value.status, caught.value.code) == (500, "InternalError")
    assert "FileNotFoundError" in caught.value.message  # what failed, where to look,
    assert "/var/lib" not in caught.value.message  # but no host path


def test_request_id_travels_and_is_logged(
    server: tuple[str, Counter[str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(log.RequestIdFilter())
    token = log.current_request_id.set("req-feedface")
    try:
        answer = RpcClient(server[0]).call("GET", "/request-id")
    finally:
        log.current_request_id.reset(token)
    assert answer == {"id": "req-feedface"}
    assert any(getattr(r, "request_id", None) == "req-feedface" for r in caplog.records)


def test_a_request_id_that_is_no_plain_token_is_replaced(
    server: tuple[str, Counter[str]],
) -> None:
    forged = "</requestId><Errors>forged"
    answer = requests.get(server[0] + "/request-id", headers={log.REQUEST_ID_HEADER: forged})
    assert answer.json()["id"].startswith("req-") and "forged" not in answer.json()["id"]
    kept = requests.get(server[0] + "/request-id", headers={log.REQUEST_ID_HEADER: "req-abc.1"})
    assert kept.json()["id"] == "req-abc.1"


def test_safe_methods_are_retried_others_not(server: tuple[str, Counter[str]]) -> None:
    url, calls = server
    assert RpcClient(url, retries=3).call("GET", "/flaky") == {"ok": "yes"}
    assert calls["GET"] == 3
    with pytest.raises(RemoteError) as caught:
        RpcClient(url, retries=3).call("POST", "/flaky")
    assert caught.value.status == 503 and calls["POST"] == 1


def test_nobody_listening() -> None:
    with pytest.raises(Unreachable, match=r"127\.0\.0\.1:9"):
        RpcClient("http://127.0.0.1:9", retries=1).call("GET", "/healthz")


# -- who may call what, and how much ---------------------------------------------------

API_PORT, ADMIN_PORT = 8775, 8443


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cloud CA, a server certificate, and a client certificate per role."""
    d = tmp_path_factory.mktemp("pki")
    tls.create_ca(d)
    tls.issue(d, d, "server", "nc", ["localhost"])
    for role in ("cc", "nc", "admin"):
        tls.issue(d, d, f"client-{role}", role, [])
    return d


@contextmanager
def tls_peer(ca: Path, role: str | None) -> Iterator[ssl.SSLSocket]:
    """The server's end of a real TLS connection whose client shows its certificate of
    ``role`` (none if None), verified as gunicorn does (``CERT_OPTIONAL``)."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(ca / "server.pem", ca / "server.key")
    server_side.load_verify_locations(ca / "ca.pem")
    server_side.verify_mode = ssl.CERT_OPTIONAL
    client_side = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    if role is not None:
        client_side.load_cert_chain(ca / f"client-{role}.pem", ca / f"client-{role}.key")
    ours, theirs = socket.socketpair()
    client: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: client.append(client_side.wrap_socket(theirs, server_hostname="localhost"))
    )
    handshake.start()
    server = server_side.wrap_socket(ours, server_side=True)
    handshake.join(10)
    try:
        yield server
    finally:
        for sock in (server, *client):
            sock.close()


@pytest.fixture
def daemon(tmp_path: Path) -> flask.Flask:
    """A daemon on two ports with TLS: its API (for role ``cc``) on both, its admin
    routes (for role ``admin``) only on the admin port."""
    (tmp_path / "openapi.yaml").write_text(yaml.safe_dump(SPEC))
    app = flask.Flask(__name__)
    metrics = Metrics("test")
    metrics.observe("calls", 0.5)
    rpc.init_app(app, OpenApiSpec(tmp_path / "openapi.yaml"), True, metrics)
    api = flask.Blueprint("api", __name__, url_prefix="/v1")
    admin = flask.Blueprint("admin", __name__, url_prefix="/admin")

    @api.get("/things")
    def things() -> dict[str, list[str]]:
        return {"things": []}

    @api.post("/echo")
    def echo() -> dict[str, Any]:
        return rpc.json_body("Echo")

    @api.delete("/things/<name>")
    def forget(name: str) -> dict[str, str]:
        return {"forgotten": name}

    @admin.get("/users")
    def users() -> dict[str, list[str]]:
        return {"users": ["alice"]}

    rpc.register_blueprint(app, api, roles=["cc"])
    rpc.register_blueprint(app, admin, roles=["admin"], ports=[ADMIN_PORT])
    return app


def get(
    app: flask.Flask, ca: Path, path: str, role: str | None, port: int = API_PORT
) -> TestResponse:
    with tls_peer(ca, role) as peer:
        environ = {"gunicorn.socket": peer, "SERVER_PORT": str(port)}
        return app.test_client().get(path, environ_overrides=environ)


def error_code(response: TestResponse) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]["code"]


def test_a_blueprint_serves_only_its_roles(daemon: flask.Flask, ca: Path) -> None:
    assert get(daemon, ca, "/v1/things", "cc").get_json() == {"things": []}
    assert error_code(get(daemon, ca, "/v1/things", None)) == (401, "ClientCertificateRequired")
    refused = get(daemon, ca, "/v1/things", "nc")
    assert error_code(refused) == (403, "PeerNotAllowed")
    assert "'nc'" in refused.get_json()["error"]["message"]
    # roles are the blueprint's, not the daemon's: the admin is refused the API...
    assert error_code(get(daemon, ca, "/v1/things", "admin", ADMIN_PORT)) == (
        403,
        "PeerNotAllowed",
    )
    # ...and the API's caller the admin routes
    assert get(daemon, ca, "/admin/users", "admin", ADMIN_PORT).get_json() == {"users": ["alice"]}
    assert error_code(get(daemon, ca, "/admin/users", "cc", ADMIN_PORT)) == (403, "PeerNotAllowed")


def test_a_blueprint_is_served_only_on_its_ports(daemon: flask.Flask, ca: Path) -> None:
    """On another port its routes do not exist, whoever asks (its own role included)."""
    answer = get(daemon, ca, "/admin/users", "admin", API_PORT)
    assert error_code(answer) == (404, "NotFound")
    assert error_code(get(daemon, ca, "/admin/users", None, API_PORT)) == (404, "NotFound")
    # a blueprint without ports is served on every port
    assert get(daemon, ca, "/v1/things", "cc", ADMIN_PORT).status_code == 200


def test_health_and_contract_are_open_metrics_need_a_certificate(
    daemon: flask.Flask, ca: Path
) -> None:
    assert get(daemon, ca, "/healthz", None).get_json() == {"status": "ok"}
    assert get(daemon, ca, "/v1/openapi.json", None).get_json()["info"]["title"] == "test"
    assert error_code(get(daemon, ca, "/metrics", None)) == (401, "ClientCertificateRequired")
    for role in ("cc", "nc", "admin"):
        assert "test_calls_seconds" in get(daemon, ca, "/metrics", role).text


def test_without_tls_everyone_is_served(tmp_path: Path) -> None:
    (tmp_path / "openapi.yaml").write_text(yaml.safe_dump(SPEC))
    app = flask.Flask(__name__)
    rpc.init_app(app, OpenApiSpec(tmp_path / "openapi.yaml"), False)
    api = flask.Blueprint("api", __name__)
    api.get("/things")(lambda: {"things": []})
    rpc.register_blueprint(app, api, roles=["cc"])
    assert app.test_client().get("/things").status_code == 200


def test_a_body_beyond_the_limit_is_refused(daemon: flask.Flask, ca: Path) -> None:
    too_big = b"x" * (rpc.MAX_REQUEST_BYTES + 1)
    with tls_peer(ca, "cc") as peer:
        client = daemon.test_client()
        environ = {"gunicorn.socket": peer, "SERVER_PORT": str(API_PORT)}
        # refused before the route runs, whether or not it reads the body
        for method, path in (("POST", "/v1/echo"), ("DELETE", "/v1/things/a")):
            answer = client.open(
                path,
                method=method,
                data=too_big,
                content_type="application/json",
                headers={log.REQUEST_ID_HEADER: "req-0123456789abcdef"},
                environ_overrides=environ,
            )
            assert error_code(answer) == (413, "RequestTooLarge")
            assert answer.get_json()["error"]["request_id"] == "req-0123456789abcdef"
        # a body of unannounced length (chunked) is refused too, read no further than
        # just past the limit
        endless = io.BytesIO(b"x" * (4 * rpc.MAX_REQUEST_BYTES))
        streamed = client.post(
            "/v1/echo",
            input_stream=endless,
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={**environ, "wsgi.input_terminated": True},
        )
        assert error_code(streamed) == (413, "RequestTooLarge")
        assert endless.tell() <= rpc.MAX_REQUEST_BYTES + 1
        # at the limit it is read as usual
        word = b'{"word": "hi"}'
        at_limit = word + b" " * (rpc.MAX_REQUEST_BYTES - len(word))
        answer = client.post(
            "/v1/echo", data=at_limit, content_type="application/json", environ_overrides=environ
        )
        assert answer.get_json() == {"word": "hi"}


def test_a_stranger_beyond_the_limit_makes_the_daemon_read_nothing(daemon: flask.Flask) -> None:
    """Only callers of the cloud have their oversized body drained (so that they see
    the 413): a caller without a certificate cannot make the daemon read 64 MiB."""
    size = 2 * rpc.MAX_REQUEST_BYTES
    body = io.BytesIO(b"x" * size)
    answer = daemon.test_client().post(
        "/v1/echo",
        input_stream=body,
        content_type="application/json",
        headers={"Content-Length": str(size)},
        environ_overrides={"SERVER_PORT": str(API_PORT)},
    )
    assert error_code(answer) == (413, "RequestTooLarge")
    assert body.tell() == 0
