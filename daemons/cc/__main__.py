"""``mallee-cc``: serve the Cluster Controller with gunicorn."""

from __future__ import annotations

from collections.abc import Sequence

from mallee.cc.app import create_app
from mallee.cc.config import CcConfig
from mallee.common import server


def main(argv: Sequence[str] | None = None) -> None:
    server.main(CcConfig, create_app, argv)


if __name__ == "__main__":
    main()
