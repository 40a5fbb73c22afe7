"""A background thread that runs one function every interval: the NC's monitor, the CC's
poller. A failing run is logged, and the next one comes on time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Periodic(threading.Thread):
    def __init__(self, name: str, interval_s: float, run_once: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.run_once = run_once

    def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:
                logger.exception("%s failed", self.name)
            time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
