"""describeInstances latency with many instances, over mutual TLS to a real `mallee-nc`.

The NC runs on libvirt's test driver (so 50 instances need no 50 guests) but does
everything else for real: image download, qcow2 overlays, records on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from bench.harness import bench_host, percentile, verdict
from mallee.common.rpc import RpcClient
from tests.support.daemons import NcDaemon
from tests.support.http import serve_directory

TARGET_P99_MS = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with bench_host() as (workdir, pki):
        (workdir / "www").mkdir()
        blank = workdir / "www" / "blank.raw"
        blank.write_bytes(b"\0" * (1 << 20))
        digest = "sha256:" + hashlib.sha256(blank.read_bytes()).hexdigest()
        (workdir / "nc").mkdir(mode=0o755)
        nc = NcDaemon(
            workdir / "nc",
            pki,
            "bench-describe",
            libvirt_uri="test:///default",
            hypervisor="qemu",
            cpu_overcommit=float(args.instances),
            swap_mb=0,
            monitor_interval_s=5.0,
        )
        nc.start()
        try:
            with serve_directory(workdir / "www") as server:
                image = {"id": "emi-b1a4b1a4", "url": f"{server.url}/blank.raw", "digest": digest}
                for n in range(args.instances):
                    nc.client.call(
                        "POST",
                        "/v1/instances",
                        {
                            "instance_id": f"i-{n:017x}",
                            "reservation_id": "r-0123456789abcdef0",
                            "owner_id": "bench",
                            "vm_type": {
                                "name": "t1.nano",
                                "cores": 1,
                                "memory_mb": 64,
                                "disk_gb": 1,
                            },
                            "image": image,
                        },
                    )
            client = RpcClient(nc.url, pki.cc)  # unchecked: time the NC, not the checker
            timings = []
            for _ in range(args.calls):
                started = time.perf_counter()
                answer = client.call("GET", "/v1/instances")
                timings.append((time.perf_counter() - started) * 1000)
                assert len(answer["instances"]) == args.instances
        finally:
            nc.cleanup()
    p50, p99 = percentile(timings, 50), percentile(timings, 99)
    print(
        f"describeInstances with {args.instances} instances, {args.calls} calls over TLS: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms   target p99 ≤ {TARGET_P99_MS:.0f} ms: "
        f"{verdict(p99 <= TARGET_P99_MS)}"
    )


if __name__ == "__main__":
    main()
