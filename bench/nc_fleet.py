"""Many NCs in one process, for benchmarks: N copies of the real NC app on libvirt's
test driver, each on its own port, all served by one gunicorn.

Run as ``python -m bench.nc_fleet --count N --workdir DIR --ca CA --cert C --key K``;
it writes ``DIR/ports.json`` once every port is bound. The listening sockets are bound
here, before gunicorn starts, and handed to it (``fd://``): picking free ports first and
binding them later let two NCs draw the same port, and the fleet served fewer than N.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mallee.common.config import CommonConfig
from mallee.common.server import GunicornApp, gunicorn_options
from mallee.nc.app import create_app
from mallee.nc.config import NcConfig

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    common = {"tls": True, "ca_cert": args.ca, "log_level": "WARNING"}
    listeners = [socket.create_server(("127.0.0.1", 0), backlog=128) for _ in range(args.count)]
    ports = [int(listener.getsockname()[1]) for listener in listeners]
    apps = {}
    for n, port in enumerate(ports):
        node = args.workdir / f"nc{n}"
        apps[str(port)] = create_app(
            {
                "common": common,
                "nc": {
                    "node_name": f"fleet-{n}",
                    "libvirt_uri": "test:///default",
                    "hypervisor": "qemu",
                    "instance_dir": str(node / "instances"),
                    "image_cache_dir": str(node / "images"),
                    "swap_mb": 0,
                    "public_bridge": "user",  # the CLC names each instance's MAC
                    "tls_cert": args.cert,  # shown to the CLC's image store too
                    "tls_key": args.key,
                    "cpu_overcommit": 64.0,
                    "monitor_interval_s": 3600.0,
                },
            }
        )

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        port = environ.get("HTTP_HOST", "").rpartition(":")[2]
        return apps[port](environ, start_response)

    options = gunicorn_options(
        CommonConfig(log_level="WARNING", ca_cert=args.ca),
        NcConfig(threads=64, tls_cert=args.cert, tls_key=args.key),
    )
    options["bind"] = [f"fd://{listener.fileno()}" for listener in listeners]
    options["accesslog"] = None
    (args.workdir / "ports.json").write_text(json.dumps(ports))
    GunicornApp(lambda: dispatch, options).run()


if __name__ == "__main__":
    main()
