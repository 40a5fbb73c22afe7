"""The NC's app factory: config, then plumbing, then routes, then the monitors."""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flask

from mallee.common import config, log, rpc
from mallee.common.openapi import OpenApiSpec
from mallee.common.overlay import overlay_problem
from mallee.common.periodic import Periodic
from mallee.nc import api, hostcheck
from mallee.nc.config import NcConfig
from mallee.nc.service import NodeController, RefusedToStart

OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> flask.Flask:
    """``overrides`` maps sections to keys, as in the config file: ``{"nc": {...}}``."""
    common, nc_config = config.load(NcConfig, overrides)
    log.setup(common.log_level)
    app = flask.Flask(__name__)
    if problem := hostcheck.kvm_problem(nc_config.libvirt_uri):
        app.logger.warning(problem)
    bridged = nc_config.public_bridge not in ("", "user")
    if bridged and (problem := hostcheck.bridge_filtering_problem()):
        raise RefusedToStart(problem)
    if problem := overlay_problem("nc", nc_config.overlay, nc_config.overlay_address):
        raise RefusedToStart(problem)
    if nc_config.overlay == "vde" and not common.tls:
        raise RefusedToStart(
            '[nc] overlay = "vde" needs [common] tls = true: its wire is a trunk into this'
            " node's VLANs, and must not be open to anyone who reaches it"
        )
    image_tls = (
        rpc.ClientTLS(common.ca_cert, nc_config.tls_cert, nc_config.tls_key) if common.tls else None
    )
    nc = NodeController(nc_config, image_tls)
    app.extensions["mallee.nc"] = nc
    rpc.init_app(app, OpenApiSpec(OPENAPI), common.tls)
    rpc.register_blueprint(app, api.bp, roles=nc_config.allowed_clients)
    Periodic("nc-monitor", nc_config.monitor_interval_s, nc.reconcile).start()
    if nc_config.overlay == "vde" and nc.networks.overlay is not None:
        atexit.register(nc.networks.overlay.stop)  # an orderly exit ends its processes
        # which are started again if they die
        Periodic("nc-overlay", nc_config.monitor_interval_s, nc.networks.ensure).start()
    return app
