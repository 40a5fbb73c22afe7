"""8 launches at once on one NC → all 8 boot markers, against 8 bare `virsh create` at once.

The NC gets its 8 runInstance calls at the same moment (one thread each, as a CC
dispatches a batch) and the figure is the time until the last of the 8 guests shows its
boot marker in getConsoleOutput; the bare side starts the same domain XML 8 times at once
with `virsh create`, disks made beforehand, and watches the console log files. The NC's
image cache is warm. Rounds alternate which side goes first; the figure is the median of
per-round ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from bench.harness import (
    BootBench,
    boot_bench,
    interleaved,
    median,
    run_all,
    verdict,
    wait_for_all,
)

TARGET = 1.10
BATCH_TIMEOUT_S = 300  # 8 TCG guests on 2 cores take about 20 s


def nc_batch(bench: BootBench, instance_ids: list[str]) -> float:
    started = time.monotonic()
    try:
        run_all([partial(bench.launch, i) for i in instance_ids])
        booted = {i: bench.nc_booted(i) for i in instance_ids}
        return max(wait_for_all(booted, started, BATCH_TIMEOUT_S).values())
    finally:
        bench.terminate(instance_ids)


def bare_batch(bench: BootBench, names: list[str]) -> float:
    domains = [bench.bare(name) for name in names]
    try:
        started = time.monotonic()
        run_all([domain.start for domain in domains])
        booted: dict[str, Callable[[], bool]] = {d.name: d.booted for d in domains}
        return max(wait_for_all(booted, started, BATCH_TIMEOUT_S).values())
    finally:
        for domain in domains:
            domain.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    # 8 one-core instances on this 2-core machine: let the NC promise that many cores.
    with boot_bench(cpu_overcommit=float(args.instances)) as bench:
        times = interleaved(
            args.rounds,
            lambda r: nc_batch(bench, [f"i-{r:08x}{n:09x}" for n in range(args.instances)]),
            lambda r: bare_batch(bench, [f"bench-bare-{r}-{n}" for n in range(args.instances)]),
            "round",
        )
    ratios = times.ratios
    ratio = median(ratios)
    print(
        f"\n{args.instances} at once, median time to the last boot marker: NC "
        f"{median(times.nc):.2f} s, virsh create {median(times.bare):.2f} s"
    )
    print(
        f"NC / virsh create, median of {len(ratios)} rounds: {ratio:.3f}   "
        f"target ≤ {TARGET:.2f}: {verdict(ratio <= TARGET)}"
    )


if __name__ == "__main__":
    main()
