"""Serve a daemon's Flask app with gunicorn (never Flask's development server).

One worker process with threads: a daemon keeps its state in the process (the NC's
instance table, image downloads under way, the monitor thread), so a second worker would
be a second, disagreeing daemon.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socketserver
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import flask
from gunicorn.app.base import BaseApplication

from mallee.common import config, log
from mallee.common.config import CommonConfig, DaemonConfig

logger = logging.getLogger(__name__)


def gunicorn_options(common: CommonConfig, daemon: DaemonConfig) -> dict[str, Any]:
    """gunicorn's settings for ``daemon``: one worker, its threads, every one of its
    ports, and its certificate (the same on every port)."""
    options: dict[str, Any] = {
        "bind": [f"{daemon.listen}:{port}" for port in daemon.ports()],
        "workers": 1,
        "worker_class": "gthread",
        "threads": daemon.threads,
        # gthread's timeout only watches the worker's heartbeat, not each request.
        "timeout": 120,
        # Long enough that a caller polling every few seconds (a CC its nodes, the CLC
        # its CCs) keeps its connection instead of a TLS handshake per call; an idle
        # connection waits in the worker's poller, not in a thread.
        "keepalive": 75,
        "graceful_timeout": 10,
        # gunicorn's control socket is one path per user; several daemons share a host.
        "control_socket_disable": True,
        "loglevel": common.log_level.lower(),
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms [%({x-mallee-request-id}o)s]',
    }
    if common.tls:
        options |= {
            "certfile": daemon.tls_cert,
            "keyfile": daemon.tls_key,
            "ca_certs": common.ca_cert,
            "cert_reqs": ssl.CERT_OPTIONAL,
        }
    return options


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """gunicorn running the WSGI app ``factory`` makes, with ``options`` as settings."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """The app, made in the worker; what it holds for the worker's life (the CLC's
        EC2 model of thousands of shapes, say) is then kept out of the garbage
        collector's full passes, which would otherwise walk it again and again, in the
        middle of requests."""
        app = self._factory()
        gc.collect()
        gc.freeze()
        return app


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # a caller that sends nothing is hung up on, and frees its thread

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)


def serve_plain_http(app: Any, host: str, port: int, name: str) -> WSGIServer:
    """Serve ``app`` over plain HTTP from a thread of this process, for callers that
    cannot speak TLS with the cloud's CA (guests asking the metadata service)."""
    server = make_server(host, port, app, _ThreadingWSGIServer, _QuietHandler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def main(
    section: type[DaemonConfig], factory: Callable[[], flask.Flask], argv: Sequence[str] | None
) -> None:
    """The ``mallee-<component>`` command: read the host's config, serve the app where
    the component's ``section`` says."""
    component = section.section_name
    parser = argparse.ArgumentParser(
        prog=f"mallee-{component}", description=f"Serve mallee's {component.upper()}."
    )
    parser.add_argument(
        "--config",
        help=f"the host's config file (default: ${config.PATH_ENV} or {config.DEFAULT_PATH})",
    )
    args = parser.parse_args(argv)
    if args.config:
        os.environ[config.PATH_ENV] = args.config
    common, daemon = config.load(section)
    options = gunicorn_options(common, daemon)
    log.setup(common.log_level)
    GunicornApp(factory, options).run()
