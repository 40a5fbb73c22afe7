"""The CLC's app factory: config, the database brought to the newest schema, then the
EC2 API."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flask

from mallee.cc.client import CcClient
from mallee.clc import db, ec2api
from mallee.clc.actions import Cloud
from mallee.clc.config import ClcConfig
from mallee.clc.frontend import Ec2Frontend
from mallee.common import config, log, rpc
from mallee.common.metrics import Metrics


def create_app(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> flask.Flask:
    """``overrides`` maps sections to keys, as in the config file: ``{"clc": {...}}``."""
    common, clc_config = config.load(ClcConfig, overrides)
    log.setup(common.log_level)
    db.migrate(clc_config.database_url)
    sessions = db.sessions(db.engine_for(clc_config.database_url))
    tls_files = (
        rpc.ClientTLS(common.ca_cert, clc_config.tls_cert, clc_config.tls_key)
        if common.tls
        else None
    )

    timeout = clc_config.cc_timeout_s

    @functools.cache  # one client, and its connections, per CC
    def cc_client(url: str) -> CcClient:
        rpc_client = rpc.RpcClient(url, tls_files, timeout=(min(timeout, 3.05), timeout), retries=1)
        return CcClient(rpc_client)

    cloud = Cloud(clc_config.region, clc_config.catalog(), cc_client)
    app = flask.Flask(__name__)
    app.extensions["mallee.clc"] = Ec2Frontend(sessions, cloud, clc_config.accept_signature_v2)
    rpc.init_app(app, None, common.tls, Metrics("mallee"))
    app.register_blueprint(ec2api.bp)  # open to all: callers sign their requests
    return app
