"""The NC's monitor: a thread that reconciles the instance table with libvirt."""

from __future__ import annotations

import logging
import threading
import time

from mallee.nc.service import NodeController

logger = logging.getLogger(__name__)


class Monitor(threading.Thread):
    def __init__(self, nc: NodeController, interval_s: float) -> None:
        super().__init__(name="nc-monitor", daemon=True)
        self.nc = nc
        self.interval_s = interval_s

    def run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.nc.reconcile()
            except Exception:
                logger.exception("monitor pass failed")
