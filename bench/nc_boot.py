"""NC runInstance → boot marker, against a bare `virsh create` of the same domain.

Both boot the tiny guest with the domain XML the NC renders, disks made the same way
(outside the bare path's timing, as an admin would prepare them). The pairs are
interleaved, their order alternating, and the figure is the median of per-pair ratios.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

from bench.harness import bench_host, median, verdict
from mallee.nc import disks
from tests.support import guest
from tests.support.daemons import NcDaemon
from tests.support.http import serve_directory

TARGET = 1.10
POLL_S = 0.1


def nc_boot(nc: NcDaemon, image: guest.GuestImage, instance_id: str) -> float:
    started = time.monotonic()
    nc.client.call("POST", "/v1/instances", guest.run_request(instance_id, image))
    guest.wait_for_console(nc.client, instance_id, guest.MARKER)
    elapsed = time.monotonic() - started
    nc.client.call("DELETE", f"/v1/instances/{instance_id}")
    return elapsed


def bare_boot(template: str, nc_dir: Path, cached_root: Path, workdir: Path, n: int) -> float:
    name = f"bench-bare-{n}"
    directory = workdir / name
    directory.mkdir(mode=0o755)
    disks.create(directory, cached_root, "raw", 1, 64)
    xml = (
        template.replace(str(nc_dir), str(directory))
        .replace(nc_dir.name, name)
        .replace("node='bench-nc'", "node='bench-bare'")
    )
    (directory / "domain.xml").write_text(xml)
    console = directory / "console.log"
    started = time.monotonic()
    subprocess.run(["virsh", "-q", "create", str(directory / "domain.xml")], check=True)
    try:
        while not (console.exists() and guest.MARKER in console.read_text(errors="replace")):
            if time.monotonic() - started > 120:
                raise TimeoutError(f"{name} did not boot")
            time.sleep(POLL_S)
        return time.monotonic() - started
    finally:
        subprocess.run(["virsh", "-q", "destroy", name], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    image_dir = guest.build()
    with bench_host() as (workdir, pki), serve_directory(image_dir) as server:
        image = guest.published(image_dir, server.url)
        (workdir / "nc").mkdir(mode=0o755)
        nc = NcDaemon(workdir / "nc", pki, "bench-nc")
        nc.start()
        try:
            # Warm-up: fills the image cache and gives the domain XML the NC renders.
            warm = "i-00000000000000000"
            nc.client.call("POST", "/v1/instances", guest.run_request(warm, image))
            template = (nc.instance_dir / warm / "domain.xml").read_text()
            guest.wait_for_console(nc.client, warm, guest.MARKER)
            nc.client.call("DELETE", f"/v1/instances/{warm}")
            cached_root = nc.workdir / "images" / image.image["digest"].removeprefix("sha256:")
            print(f"{'pair':>4} {'nc (s)':>8} {'virsh (s)':>10} {'ratio':>6}")
            ratios = []
            for n in range(1, args.pairs + 1):
                instance_id = f"i-{n:017x}"
                if n % 2:
                    t_nc = nc_boot(nc, image, instance_id)
                    t_bare = bare_boot(template, nc.instance_dir / warm, cached_root, workdir, n)
                else:
                    t_bare = bare_boot(template, nc.instance_dir / warm, cached_root, workdir, n)
                    t_nc = nc_boot(nc, image, instance_id)
                ratios.append(t_nc / t_bare)
                print(f"{n:>4} {t_nc:>8.2f} {t_bare:>10.2f} {ratios[-1]:>6.3f}", flush=True)
        finally:
            nc.cleanup()
    ratio = median(ratios)
    print(
        f"\nrunInstance→boot marker / virsh create→boot marker, median of {len(ratios)} "
        f"pairs: {ratio:.3f}   target ≤ {TARGET:.2f}: {verdict(ratio <= TARGET)}"
    )


if __name__ == "__main__":
    main()
