"""describeInstances latency with many instances, over mutual TLS to a real `mallee-nc`.

The NC runs on libvirt's test driver (so 50 instances need no 50 guests) but does
everything else for real: image download, qcow2 overlays, records on disk. Two callers
alternate call by call: one keeps its connection alive, as the CC's polls do (the
daemons keep an idle connection 75 s), the other opens a fresh TLS connection (handshake
with client certificate) for every call, as a CC does after a restart or a lost one.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

import requests

from bench.harness import bench_host, percentile, verdict
from mallee.common.rpc import RpcClient
from tests.support.daemons import NcDaemon
from tests.support.guest import wait_until
from tests.support.http import serve_directory

TARGET_P99_MS = 20.0


def connection_headers(client: RpcClient) -> list[str]:
    """The daemon's ``Connection`` header on each of the client's answers from now on:
    ``close`` means it closed the connection after answering, so the next call
    reconnects; ``keep-alive`` means the connection stays for the next call."""
    headers: list[str] = []

    def record(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        headers.append(response.headers.get("Connection", ""))

    client.session.hooks["response"].append(record)
    return headers


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

                def all_running() -> bool:
                    instances = nc.client.call("GET", "/v1/instances")["instances"]
                    return sum(i["nc_state"] == "running" for i in instances) == args.instances

                wait_until(all_running, 120, f"{args.instances} instances running")
            # Unchecked clients: time the NC, not the OpenAPI checker.
            keep_alive = RpcClient(nc.url, pki.cc)
            fresh = RpcClient(nc.url, pki.cc)
            fresh.session.headers["Connection"] = "close"
            kept, closed = connection_headers(keep_alive), connection_headers(fresh)
            callers = {"keep-alive": keep_alive, "fresh TLS": fresh}
            timings: dict[str, list[float]] = {name: [] for name in callers}
            for _ in range(args.calls):
                for name, client in callers.items():
                    started = time.perf_counter()
                    answer = client.call("GET", "/v1/instances")
                    timings[name].append((time.perf_counter() - started) * 1000)
                    assert len(answer["instances"]) == args.instances
            assert set(kept) == {"keep-alive"} and set(closed) == {"close"}, (
                set(kept),
                set(closed),
            )
        finally:
            nc.cleanup()
    print(f"describeInstances with {args.instances} instances, {args.calls} calls over TLS each:")
    for name, times in timings.items():
        p50, p99 = percentile(times, 50), percentile(times, 99)
        print(
            f"  {name:<11} p50 {p50:6.2f} ms, p99 {p99:6.2f} ms   "
            f"target p99 ≤ {TARGET_P99_MS:.0f} ms: {verdict(p99 <= TARGET_P99_MS)}"
        )


if __name__ == "__main__":
    main()
