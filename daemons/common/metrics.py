"""Timings a daemon keeps about itself, served as Prometheus text at ``/metrics``.

Only what operators and the benchmarks read: timings (per name, how many, their sum,
the last and the largest, in seconds) and counts of events by kind.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Timer:
    count: int = 0
    total: float = 0.0
    last: float = 0.0
    largest: float = 0.0


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._timers: dict[str, _Timer] = {}
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            timer = self._timers.setdefault(name, _Timer())
            timer.count += 1
            timer.total += seconds
            timer.last = seconds
            timer.largest = max(timer.largest, seconds)

    def count(self, name: str, **labels: str) -> None:
        """One more event ``name`` of these labels (``kind="lost"``, say)."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def counted(self, name: str, **labels: str) -> int:
        with self._lock:
            return self._counts.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        lines = []
        with self._lock:
            for (name, labels), count in sorted(self._counts.items()):
                metric = f"{self.prefix}_{name}_total"
                if f"# TYPE {metric} counter" not in lines:  # once per metric, sorted first
                    lines.append(f"# TYPE {metric} counter")
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{metric}{{{text}}} {count}")
            for name, t in sorted(self._timers.items()):
                metric = f"{self.prefix}_{name}_seconds"
                for suffix, kind, value in (
                    ("count", "counter", float(t.count)),
                    ("sum", "counter", t.total),
                    ("last", "gauge", t.last),
                    ("max", "gauge", t.largest),
                ):
                    lines += [f"# TYPE {metric}_{suffix} {kind}", f"{metric}_{suffix} {value:g}"]
        return "\n".join(lines) + "\n"
