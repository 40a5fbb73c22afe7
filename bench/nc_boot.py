"""NC runInstance → boot marker, against a bare `virsh create` of the same domain.

Both boot the tiny guest with the domain XML the NC renders, disks made the same way
(outside the bare path's timing, as an admin would prepare them); the NC's image cache is
warm (one boot before the pairs). Both sides' markers are looked for every 0.1 s:
getConsoleOutput on the NC, the console log file for the bare domain. The pairs are
interleaved, their order alternating, and the figure is the median of per-pair ratios.
"""

from __future__ import annotations

import argparse
import time

from bench.harness import BootBench, boot_bench, interleaved, median, verdict, wait_for_all

TARGET = 1.10
BOOT_TIMEOUT_S = 120


def nc_boot(bench: BootBench, instance_id: str) -> float:
    started = time.monotonic()
    bench.launch(instance_id)
    try:
        return wait_for_all({instance_id: bench.nc_booted(instance_id)}, started, BOOT_TIMEOUT_S)[
            instance_id
        ]
    finally:
        bench.terminate([instance_id])


def bare_boot(bench: BootBench, name: str) -> float:
    domain = bench.bare(name)
    try:
        started = time.monotonic()
        domain.start()
        return wait_for_all({name: domain.booted}, started, BOOT_TIMEOUT_S)[name]
    finally:
        domain.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    with boot_bench() as bench:
        times = interleaved(
            args.pairs,
            lambda n: nc_boot(bench, f"i-{n:017x}"),
            lambda n: bare_boot(bench, f"bench-bare-{n}"),
            "pair",
        )
    ratios = times.ratios
    ratio = median(ratios)
    print(
        f"\nmedian boot: NC runInstance→marker {median(times.nc):.2f} s, "
        f"virsh create→marker {median(times.bare):.2f} s"
    )
    print(
        f"runInstance→boot marker / virsh create→boot marker, median of {len(ratios)} "
        f"pairs: {ratio:.3f}   target ≤ {TARGET:.2f}: {verdict(ratio <= TARGET)}"
    )


if __name__ == "__main__":
    main()
