"""The metadata service for the instances on the CC's VLANs when the CLC runs on
another host (seed §2.2's redirect of 169.254.169.254 cannot keep the source address
there: the CLC's host does not route the private subnet back through this CC, and
clusters share the subnet's slices). The VLANs' redirect sends such requests here
instead; the proxy asks the CLC's metadata service for them, vouching for the asking
instance's address (vouch.py), and relays the answer."""

from __future__ import annotations

import http.cookiejar

import flask
import netaddr
import requests

from mallee.cc.config import CcConfig
from mallee.cc.router import metadata_target
from mallee.common import vouch
from mallee.common.overlay import local_address_problem

# what a guest's request may carry on to the metadata service: IMDSv2's headers, and a
# proxy's own, which the CLC refuses tokens for (as EC2 does)
FORWARDED = {h.lower() for h in (vouch.TOKEN_HEADER, vouch.TTL_HEADER, "X-Forwarded-For")}
TIMEOUT_S = (3.05, 10.0)
MAX_BODY = 1024


def needed(config: CcConfig) -> bool:
    """Whether the VLANs' instances reach the metadata service through this proxy: when
    the CLC's (``[cc] metadata_address``) is on another host."""
    if not (config.overlay and config.metadata_address):
        return False
    host = metadata_target(config.metadata_address)[0]
    return bool(local_address_problem("cc", "metadata_address", host))


def proxy_app(target: str, secret: str, subnet: str) -> flask.Flask:
    """The proxy's app: ``target`` is the CLC's metadata service (``HOST:PORT``);
    only instances' private addresses (``subnet``) are served."""
    app = flask.Flask("mallee.cc.metadataproxy")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY  # a guest's PUT carries nothing
    private = netaddr.IPNetwork(subnet)
    session = requests.Session()
    session.trust_env = False  # never the host's HTTP proxy: the vouch goes to the CLC only
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    @app.route("/", defaults={"path": ""}, methods=["GET", "PUT"])
    @app.route("/<path:path>", methods=["GET", "PUT"])
    def relay(path: str) -> flask.Response:
        asker = flask.request.remote_addr or ""
        if not netaddr.valid_ipv4(asker) or netaddr.IPAddress(asker) not in private:
            return flask.Response("Forbidden\n", 403, mimetype="text/plain")
        headers = {k: v for k, v in flask.request.headers.items() if k.lower() in FORWARDED}
        method = flask.request.method
        headers[vouch.ADDRESS_HEADER] = asker
        headers[vouch.SIGNATURE_HEADER] = vouch.sign(secret, asker, method, f"/{path}")
        try:
            answer = session.request(
                method,
                f"http://{target}/{path}",
                params=list(flask.request.args.items(multi=True)),
                data=flask.request.get_data(),
                headers=headers,
                timeout=TIMEOUT_S,
                allow_redirects=False,
            )
        except requests.Timeout:
            return flask.Response("Gateway Timeout\n", 504, mimetype="text/plain")
        except requests.RequestException:
            return flask.Response("Bad Gateway\n", 502, mimetype="text/plain")
        relayed = flask.Response(answer.content, answer.status_code)
        for name in ("Content-Type", vouch.TTL_HEADER):
            if name in answer.headers:
                relayed.headers[name] = answer.headers[name]
        return relayed

    return app
