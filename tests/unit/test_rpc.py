"""The internal RPC convention, server and client, over real HTTP on loopback."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
import yaml
from werkzeug.serving import make_server

from mallee.common import log, rpc
from mallee.common.errors import InstanceNotFound
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
    rpc.init_app(app, OpenApiSpec(tmp_path / "openapi.yaml"), False, [])
    calls: Counter[str] = Counter()

    @app.post("/echo")
    def echo() -> dict[str, Any]:
        return rpc.json_body("Echo")

    @app.get("/missing")
    def missing() -> dict[str, str]:
        raise InstanceNotFound("instance i-1 is not on this node")

    @app.get("/boom")
    def boom() -> dict[str, str]:
        raise RuntimeError("kaput")

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
    assert "kaput" in caught.value.message


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
