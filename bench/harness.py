"""What the benchmarks share: a libvirtd, the cloud's PKI and a 0755 work folder."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support import daemons
from tests.support.daemons import Pki


@contextmanager
def bench_host() -> Iterator[tuple[Path, Pki]]:
    """A work folder QEMU can read and the PKI; libvirtd started if none answers."""
    pids = [] if daemons.libvirt_answers() else daemons.start_libvirtd()
    workdir = Path(tempfile.mkdtemp(prefix="mallee-bench-", dir="/var/tmp"))
    workdir.chmod(0o755)
    try:
        yield workdir, daemons.make_pki(workdir / "pki")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        daemons.stop_pids(pids)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


median = statistics.median
