"""``mallee-nc``: serve the Node Controller with gunicorn."""

from __future__ import annotations

from collections.abc import Sequence

from mallee.common import server
from mallee.nc.app import create_app
from mallee.nc.config import NcConfig


def main(argv: Sequence[str] | None = None) -> None:
    server.main(NcConfig, create_app, argv)


if __name__ == "__main__":
    main()
