"""The CLC's app factory: config, the database brought to the newest schema, VmControl
and its poll of the clusters, then the EC2 API and the image store's route."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flask

from mallee.cc.client import CcClient
from mallee.clc import (
    addresses,
    db,
    ec2api,
    imageapi,
    images,
    metadata,
    metadataapi,
    sla,
    wire,
)
from mallee.clc.actions import Cloud
from mallee.clc.config import ClcConfig
from mallee.clc.frontend import Ec2Frontend
from mallee.clc.vmcontrol import VmControl
from mallee.common import config, log, rpc, server, slices
from mallee.common.config import CommonConfig
from mallee.common.metrics import Metrics
from mallee.common.periodic import Periodic


def cc_clients(common: CommonConfig, clc_config: ClcConfig) -> Callable[[str], CcClient]:
    """A client of the CC at a URL, one per URL (and its connections), as the CLC."""
    tls_files = (
        rpc.ClientTLS(common.ca_cert, clc_config.tls_cert, clc_config.tls_key)
        if common.tls
        else None
    )
    timeout = clc_config.cc_timeout_s

    @functools.cache
    def cc_client(url: str) -> CcClient:
        rpc_client = rpc.RpcClient(url, tls_files, timeout=(min(timeout, 3.05), timeout), retries=1)
        return CcClient(rpc_client)

    return cc_client


def build_cloud(
    clc_config: ClcConfig,
    sessions: db.Sessions,
    cc_client: Callable[[str], CcClient],
    image_url: str,
    metrics: Metrics,
) -> Cloud:
    """What the EC2 actions work with; VmControl's poll is not started here."""
    catalog = clc_config.catalog()
    addresses.check_pool(clc_config.public_addresses, clc_config.private_subnet)
    if clc_config.private_slice_prefix:
        slices.check("clc", clc_config.private_subnet, clc_config.private_slice_prefix)
    vmcontrol = VmControl(sessions, clc_config, catalog, cc_client, image_url, metrics)
    return Cloud(
        clc_config,
        catalog,
        cc_client,
        vmcontrol,
        sla.chain_of(clc_config),
        images.ImageStore(Path(clc_config.image_dir)),
    )


def metadata_app(frontend: Ec2Frontend) -> flask.Flask:
    """The metadata service's app: another port, plain HTTP, for guests only."""
    guests = flask.Flask("mallee.clc.metadata")
    guests.extensions["mallee.clc"] = frontend
    guests.extensions["mallee.metadata"] = metadata.Tokens()
    guests.register_blueprint(metadataapi.bp)
    return guests


def create_app(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> flask.Flask:
    """``overrides`` maps sections to keys, as in the config file: ``{"clc": {...}}``."""
    common, clc_config = config.load(ClcConfig, overrides)
    log.setup(common.log_level)
    db.migrate(clc_config.database_url)
    wire.service_model()  # loaded now (about a second), not by the first caller
    sessions = db.sessions_for(clc_config.database_url)
    cc_client = cc_clients(common, clc_config)
    image_url = clc_config.public_url(common.tls)
    metrics = Metrics("mallee")
    cloud = build_cloud(clc_config, sessions, cc_client, image_url, metrics)
    app = flask.Flask(__name__)
    app.extensions["mallee.clc"] = Ec2Frontend(sessions, cloud, clc_config.accept_signature_v2)
    rpc.init_app(app, None, common.tls, metrics)
    app.register_blueprint(ec2api.bp)  # open to all: callers sign their requests
    rpc.register_blueprint(app, imageapi.bp, roles=["nc"])
    Periodic("clc-poll", clc_config.poll_interval_s, cloud.vmcontrol.poll).start()
    guests = metadata_app(app.extensions["mallee.clc"])
    server.serve_plain_http(guests, clc_config.listen, clc_config.metadata_port, "clc-metadata")
    return app
