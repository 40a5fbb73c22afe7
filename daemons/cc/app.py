"""The CC's app factory: config, then plumbing, then routes, then the poller (and the
VLANs' metadata proxy, when the CLC is on another host)."""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flask

from mallee.cc import api, metadataproxy
from mallee.cc.config import CcConfig
from mallee.cc.service import ClusterController
from mallee.common import config, log, rpc, server
from mallee.common.metrics import Metrics
from mallee.common.openapi import OpenApiSpec
from mallee.common.periodic import Periodic

OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> flask.Flask:
    """``overrides`` maps sections to keys, as in the config file: ``{"cc": {...}}``."""
    common, cc_config = config.load(CcConfig, overrides)
    log.setup(common.log_level)
    app = flask.Flask(__name__)
    metrics = Metrics("mallee")
    tls_files = (
        rpc.ClientTLS(common.ca_cert, cc_config.tls_cert, cc_config.tls_key) if common.tls else None
    )
    cc = ClusterController(cc_config, tls_files, metrics)
    atexit.register(cc.stop)  # the worker's orderly exit ends what the CC started
    app.extensions["mallee.cc"] = cc
    rpc.init_app(app, OpenApiSpec(OPENAPI), common.tls, metrics)
    rpc.register_blueprint(app, api.bp, roles=cc_config.allowed_clients)
    Periodic("cc-poller", cc_config.poll_interval_s, cc.poll).start()
    if metadataproxy.needed(cc_config):  # the VLANs' instances ask the CLC through it
        proxy = metadataproxy.proxy_app(
            cc_config.metadata_address, cc_config.metadata_proxy_secret, cc_config.private_subnet
        )
        server.serve_plain_http(
            proxy, cc_config.overlay_address, cc_config.metadata_proxy_port, "cc-metadata-proxy"
        )
    return app
