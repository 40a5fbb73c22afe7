"""The CC's poller: a thread that runs a poll cycle every poll_interval_s."""

from __future__ import annotations

import logging
import threading
import time

from mallee.cc.service import ClusterController

logger = logging.getLogger(__name__)


class Poller(threading.Thread):
    def __init__(self, cc: ClusterController, interval_s: float) -> None:
        super().__init__(name="cc-poller", daemon=True)
        self.cc = cc
        self.interval_s = interval_s

    def run(self) -> None:
        while True:
            try:
                elapsed = self.cc.poll()
            except Exception:
                logger.exception("poll cycle failed")
                elapsed = 0.0
            time.sleep(max(0.0, self.interval_s - elapsed))
