"""``mallee-nc``: serve the Node Controller with gunicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from mallee.common import config, server
from mallee.nc.app import create_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mallee-nc", description=__doc__)
    parser.add_argument(
        "--config",
        help=f"the host's config file (default: ${config.PATH_ENV} or {config.DEFAULT_PATH})",
    )
    args = parser.parse_args(argv)
    if args.config:
        os.environ[config.PATH_ENV] = args.config
    common, nc = config.load("nc")
    options = server.gunicorn_options(
        common, nc.listen, nc.port, nc.threads, nc.tls_cert, nc.tls_key
    )
    server.serve(create_app, common, options)


if __name__ == "__main__":
    main()
