"""``mallee-clc``: serve the Cloud Controller with gunicorn."""

from __future__ import annotations

from collections.abc import Sequence

from mallee.clc.app import create_app
from mallee.clc.config import ClcConfig
from mallee.common import server


def main(argv: Sequence[str] | None = None) -> None:
    server.main(ClcConfig, create_app, argv)


if __name__ == "__main__":
    main()
