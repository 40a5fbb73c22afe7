"""DescribeInstances holding 1,000 instances: mallee's latency, and its requests per
second beside moto's server mode (moto 5.2) holding as many, in the same run.

mallee: a real `mallee-clc` → `mallee-cc` → a fleet of NCs on libvirt's test driver
(`bench/nc_fleet.py`, all in one process), the 1,000 instances launched by RunInstances
in batches of 100 and all running before anything is timed. moto: `moto_server` on
loopback (plain HTTP; mallee's is HTTPS over a kept-alive connection), its 1,000
instances made by RunInstances too. Both are asked the same way: a request signed with
Signature Version 4 by botocore, sent over one kept-alive connection, timed until the
whole answer is read (not parsed: the client's XML parsing is not the server's time),
one at a time; requests per second is the count over the wall time of those calls.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.cc_scale import start_fleet
from bench.harness import bench_host, percentile, verdict
from tests.support.daemons import CcDaemon, ClcDaemon, Pki, free_port, stop_all
from tests.support.guest import wait_until

INSTANCES = 1000
BATCH = 100
P99_TARGET_MS = 50.0
RATIO_TARGET = 3.0
BODY = "Action=DescribeInstances&Version=2016-11-15"


class Asker:
    """Signed DescribeInstances calls over one kept-alive connection."""

    def __init__(self, url: str, keys: Credentials, region: str, verify: str | bool) -> None:
        self.url = url
        self.keys = keys
        self.region = region
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False

    def ask(self) -> float:
        request = AWSRequest(
            method="POST",
            url=self.url + "/",
            data=BODY,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        SigV4Auth(self.keys, "ec2", self.region).add_auth(request)
        started = time.perf_counter()
        response = self.session.post(self.url + "/", data=BODY, headers=dict(request.headers))
        response.raise_for_status()
        elapsed = time.perf_counter() - started
        if response.content.count(b"<instanceId>") != INSTANCES:
            raise RuntimeError(f"{self.url} did not answer {INSTANCES} instances")
        return elapsed

    def measure(self, calls: int) -> dict[str, float]:
        self.ask()  # the connection made
        started = time.perf_counter()
        latencies = [self.ask() * 1000 for _ in range(calls)]
        wall = time.perf_counter() - started
        return {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "rps": calls / wall,
        }


def mallee(workdir: Path, pki: Pki, calls: int) -> dict[str, float]:
    fleet, ports = start_fleet(workdir, pki, 50)
    daemons = []
    try:
        for name in ("cc", "clc"):
            (workdir / name).mkdir(mode=0o755)
        cc = CcDaemon(
            workdir / "cc", pki, poll_interval_s=5.0, dispatch_workers=32, scheduler="spread"
        )
        clc = ClcDaemon(
            workdir / "clc",
            pki,
            instance_types=["t1.nano 1 64 1"],
            instance_quota=0,
            lease_hours=0.0,
            poll_interval_s=5.0,
            private_subnet="10.128.0.0/16",
            metadata_port=free_port(),
        )
        for daemon in (cc, clc):
            daemon.start()
            daemons.append(daemon)
        for n, port in enumerate(ports):
            cc.client.call(
                "POST", "/v1/nodes", {"name": f"fleet-{n}", "url": f"https://127.0.0.1:{port}"}
            )
        wait_until(
            lambda: all(n["health"] == "up" for n in cc.client.call("GET", "/v1/nodes")["nodes"]),
            120,
            "the fleet up",
        )
        clc.admin("cluster", "add", "zone-a", cc.url)
        disk = workdir / "blank.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        emi = clc.add_disk("blank", disk)
        ec2 = clc.ec2("bench")
        ids: list[str] = []
        for _ in range(INSTANCES // BATCH):
            ran = ec2.run_instances(ImageId=emi, MinCount=BATCH, MaxCount=BATCH)
            ids += [i["InstanceId"] for i in ran["Instances"]]

        def all_running() -> bool:
            listed = ec2.describe_instances(
                Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
            )["Reservations"]
            return sum(len(r["Instances"]) for r in listed) == INSTANCES

        wait_until(all_running, 600, f"{INSTANCES} instances running")
        keys = clc.keys["bench"]
        asker = Asker(
            clc.url,
            Credentials(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]),
            keys["AWS_DEFAULT_REGION"],
            str(clc.ca),
        )
        figures = asker.measure(calls)
        for n in range(0, INSTANCES, BATCH):
            ec2.terminate_instances(InstanceIds=ids[n : n + BATCH])
        return figures
    finally:
        stop_all(daemons)
        os.killpg(fleet.pid, signal.SIGTERM)
        fleet.wait(30)


def moto(calls: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return requests.get(url + "/moto-api/", timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(up, 60, "moto_server")
        keys = Credentials("AKIAMOTOMOTOMOTO0000", "motomotomotomotomotomotomotomotomotomoto")
        ec2 = boto3.client(
            "ec2",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=keys.access_key,
            aws_secret_access_key=keys.secret_key,
        )
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        for _ in range(INSTANCES // BATCH):
            ec2.run_instances(
                ImageId=image, MinCount=BATCH, MaxCount=BATCH, InstanceType="t2.micro"
            )
        return Asker(url, keys, "us-east-1", False).measure(calls)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with bench_host() as (workdir, pki):
        ours = mallee(workdir, pki, args.calls)
    theirs = moto(args.calls)
    print(f"DescribeInstances holding {INSTANCES} instances, {args.calls} calls each")
    print(f"{'server':>8} {'p50 (ms)':>9} {'p99 (ms)':>9} {'req/s':>7}")
    for name, figures in (("mallee", ours), ("moto", theirs)):
        print(f"{name:>8} {figures['p50']:>9.1f} {figures['p99']:>9.1f} {figures['rps']:>7.1f}")
    ratio = ours["rps"] / theirs["rps"]
    print(
        f"p99 {ours['p99']:.1f} ms, target <= {P99_TARGET_MS:.0f} ms: "
        f"{verdict(ours['p99'] <= P99_TARGET_MS)}"
    )
    print(
        f"mallee / moto requests per second: {ratio:.2f}, target >= {RATIO_TARGET:.0f}: "
        f"{verdict(ratio >= RATIO_TARGET)}"
    )


if __name__ == "__main__":
    main()
