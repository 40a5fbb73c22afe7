"""The CC in front of 10, 100 and 500 NCs (libvirt's test driver, all NCs in one process):
one polling cycle, describeResources latency, and scheduling a 100-instance runInstances.

Targets (at 100 nodes): a polling cycle ≤ 2 s; describeResources p99 ≤ 20 ms;
scheduling a 100-instance runInstances ≤ 200 ms: the placement and reservation step as
the CC measures it (/metrics), with the spread policy so the 100 go to many nodes. The
whole call, which also waits for the NCs to make every instance's disks, is shown
beside it but is not what the target is about.

Nothing is measured until every registered NC is `up` in the CC (each has answered a
poll); each row says how many served.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import bench_host, percentile, verdict
from tests.support.daemons import CcDaemon, Pki
from tests.support.guest import wait_until
from tests.support.http import serve_directory

CYCLES = 3  # poll cycles averaged
TYPES = [
    {"name": "t1.small", "cores": 1, "memory_mb": 256, "disk_gb": 1},
    {"name": "m1.medium", "cores": 2, "memory_mb": 1024, "disk_gb": 2},
    {"name": "c1.large", "cores": 4, "memory_mb": 2048, "disk_gb": 4},
]


def metric(cc: CcDaemon, name: str, stat: str) -> float:
    """One figure of the CC's /metrics: stat is count, sum, last or max."""
    text = cc.client.session.get(cc.url + "/metrics").text
    match = re.search(rf"^mallee_{name}_seconds_{stat} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def start_fleet(workdir: Path, pki: Pki, count: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    fleet = workdir / f"fleet-{count}"
    fleet.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.nc_fleet",
            "--count",
            str(count),
            "--workdir",
            str(fleet),
            "--ca",
            str(pki.ca),
            "--cert",
            str(pki.nc[0]),
            "--key",
            str(pki.nc[1]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(fleet / "fleet.log").open("wb"),
        start_new_session=True,
    )

    def bound() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the fleet exited: see {fleet / 'fleet.log'}")
        return (fleet / "ports.json").exists()

    wait_until(bound, 300, f"{count} NCs to start")
    ports: list[int] = json.loads((fleet / "ports.json").read_text())
    assert len(set(ports)) == count, f"the fleet bound {len(set(ports))} ports, not {count}"
    return process, ports


def measure(workdir: Path, pki: Pki, count: int, image: dict[str, str]) -> dict[str, float]:
    fleet, ports = start_fleet(workdir, pki, count)
    cc_dir = workdir / f"cc-{count}"
    cc_dir.mkdir()
    # The shipped defaults but for more dispatch threads: the poller runs every 5 s.
    cc = CcDaemon(cc_dir, pki, poll_interval_s=5.0, dispatch_workers=32, scheduler="spread")
    try:
        cc.start()
        for n, port in enumerate(ports):
            cc.client.call(
                "POST", "/v1/nodes", {"name": f"fleet-{n}", "url": f"https://127.0.0.1:{port}"}
            )

        def nodes_up() -> int:
            nodes = cc.client.call("GET", "/v1/nodes")["nodes"]
            return sum(n["health"] == "up" for n in nodes)

        try:
            wait_until(lambda: nodes_up() == count, 120, f"{count} nodes up")
        except TimeoutError as e:
            raise TimeoutError(f"{e}: only {nodes_up()} of {count} NCs served") from None
        served = nodes_up()
        count_before, sum_before = (
            metric(cc, "cc_poll_cycle", "count"),
            metric(cc, "cc_poll_cycle", "sum"),
        )
        wait_until(
            lambda: metric(cc, "cc_poll_cycle", "count") >= count_before + CYCLES,
            CYCLES * 5.0 + 60,
            f"{CYCLES} poll cycles",
        )
        cycles = metric(cc, "cc_poll_cycle", "count") - count_before
        poll_mean = (metric(cc, "cc_poll_cycle", "sum") - sum_before) / cycles
        poll_max = metric(cc, "cc_poll_cycle", "max")

        latencies = []
        for _ in range(1000):
            started = time.perf_counter()
            cc.client.call("POST", "/v1/resources/describe", {"vm_types": TYPES})
            latencies.append((time.perf_counter() - started) * 1000)

        ids = [f"i-{n:017x}" for n in range(1, 101)]
        started = time.perf_counter()
        cc.client.call(
            "POST",
            "/v1/instances",
            {
                "reservation_id": "r-0123456789abcdef0",
                "owner_id": "bench",
                "vm_type": {"name": "t1.nano", "cores": 1, "memory_mb": 64, "disk_gb": 1},
                "image": image,
                "instances": [{"instance_id": i} for i in ids],
            },
        )
        run_s = time.perf_counter() - started
        schedule_ms = metric(cc, "cc_schedule", "last") * 1000
        cc.client.call("POST", "/v1/instances/terminate", {"instance_ids": ids})
        return {
            "served": served,
            "poll_mean": poll_mean,
            "poll_max": poll_max,
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "schedule_ms": schedule_ms,
            "run_s": run_s,
        }
    finally:
        cc.cleanup()
        os.killpg(fleet.pid, signal.SIGTERM)
        fleet.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 500])
    args = parser.parse_args()
    rows = {}
    with bench_host() as (workdir, pki):
        (workdir / "www").mkdir()
        blank = workdir / "www" / "blank.raw"
        blank.write_bytes(b"\0" * (1 << 20))
        digest = "sha256:" + hashlib.sha256(blank.read_bytes()).hexdigest()
        with serve_directory(workdir / "www") as server:
            image = {"id": "emi-b1a4b1a4", "url": f"{server.url}/blank.raw", "digest": digest}
            for count in args.nodes:
                rows[count] = measure(workdir, pki, count, image)
                print(row(count, rows[count]), flush=True)
    if 100 in rows:
        r = rows[100]
        print("\nat 100 nodes:")
        for what, value, target in (
            ("polling cycle (s)", r["poll_mean"], 2.0),
            ("describeResources p99 (ms)", r["p99"], 20.0),
            ("scheduling 100 instances (ms)", r["schedule_ms"], 200.0),
        ):
            print(f"  {what:<30} {value:8.2f}   target ≤ {target:g}: {verdict(value <= target)}")


def row(count: int, r: dict[str, float]) -> str:
    return (
        f"{count:>5} nodes ({r['served']:.0f} served): "
        f"poll cycle {r['poll_mean']:.2f} s (max {r['poll_max']:.2f}), "
        f"describeResources p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms, "
        f"scheduling 100 {r['schedule_ms']:.1f} ms, whole runInstances(100) {r['run_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
