"""The seed's Figure 6: seconds from `aws ec2 run-instances` until DescribeInstances
shows the instances running, for 1 and for 8 instances at once, as empirical CDFs,
beside the bare libvirt start of the same domains measured in the same run.

mallee's side: the real aws CLI (Debian's v2) runs `run-instances` against a real
`mallee-clc` → `mallee-cc` → `mallee-nc` (qemu:///system, TCG), and the clock stops when
DescribeInstances (boto3, every 100 ms) first shows every instance of the request
``running``. The bare side: the NC's own domain XML of the same image, its disks made
beforehand, started with `virsh create` (8 at once for the 8 case); the clock stops when
libvirt reports every domain running, which is what ``running`` means in EC2 and in
mallee. Trials alternate which side goes first; each trial's instances are terminated
and gone before the next. The NC's image cache is warm (one launch first).

Writes ``clc_run.json`` (every trial) and ``clc_run.png`` (the CDFs) to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import libvirt

from bench.harness import SWAP_MB, bench_host, percentile, renamed, run_all, verdict
from mallee.nc import disks
from tests.support import guest
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon, free_port, stop_all
from tests.support.guest import wait_until

AWS = "/usr/bin/aws"  # Debian's aws CLI v2
VM = "b1.tiny 1 128 1"  # the tiny guest's size
POLL_S = 0.1
TARGETS = {1: 1.0, 8: 2.0}  # seconds over bare at the 98th percentile


class Cloud:
    """One CLC, one CC, one NC on this host, the tiny guest registered, a user."""

    def __init__(self, workdir: Path, pki: Any) -> None:
        self.daemons: list[Any] = []
        for name in ("nc", "cc", "clc"):
            (workdir / name).mkdir(mode=0o755)
        self.nc = NcDaemon(
            workdir / "nc",
            pki,
            "bench-nc",
            swap_mb=SWAP_MB,
            public_bridge="user",
            cpu_overcommit=8.0,
            launch_workers=8,
        )
        self.cc = CcDaemon(workdir / "cc", pki)
        self.clc = ClcDaemon(
            workdir / "clc",
            pki,
            instance_types=[VM],
            instance_quota=0,
            lease_hours=0.0,
            poll_interval_s=5.0,
            metadata_port=free_port(),
        )
        for daemon in (self.nc, self.cc, self.clc):
            daemon.start()
            self.daemons.append(daemon)
        self.cc.client.call("POST", "/v1/nodes", {"name": self.nc.name, "url": self.nc.url})
        self.clc.admin("cluster", "add", "zone-a", self.cc.url)
        files = guest.build()
        self.emi = self.clc.add_image("ttylinux", files)
        bundle = workdir / "alice"
        self.clc.admin("user", "create", "alice", "--bundle", str(bundle))
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(bundle),
            **dict(
                line.removeprefix("export ").split("=", 1)
                for line in (bundle / "mallee.rc").read_text().splitlines()
                if line.startswith("export ")
            ),
        }
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        self.ec2 = self.clc.client_of({k: self.env[k] for k in keys})

    def run(self, count: int) -> tuple[float, float, list[str]]:
        """`aws ec2 run-instances --count N` → every one running; the seconds, and the
        seconds until the aws CLI had RunInstances' answer."""
        started = time.monotonic()
        done = subprocess.run(
            [
                AWS,
                "--endpoint-url",
                self.clc.url,
                "--output",
                "json",
                "ec2",
                "run-instances",
                "--image-id",
                self.emi,
                "--count",
                str(count),
                "--instance-type",
                VM.split()[0],
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        answered = time.monotonic() - started
        ids = [i["InstanceId"] for i in json.loads(done.stdout)["Instances"]]
        while True:
            answer = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
            states = [i["State"]["Name"] for r in answer for i in r["Instances"]]
            if all(s == "running" for s in states):
                return time.monotonic() - started, answered, ids
            if "terminated" in states:
                raise RuntimeError(f"an instance of {ids} ended: {answer}")
            if time.monotonic() - started > 300:
                raise TimeoutError(f"{ids} not running after 300 s")
            time.sleep(POLL_S)

    def end(self, ids: list[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=ids)
        wait_until(lambda: not self.nc.domains(), 120, "the NC's domains to go")

    def stop(self) -> None:
        stop_all(self.daemons)


def bare_domains(
    cloud: Cloud, workdir: Path, template: str, template_dir: Path, count: int, trial: int
) -> list[tuple[str, Path]]:
    """``count`` copies of the NC's domain, disks made beforehand, not started."""
    made = []
    for n in range(count):
        name = f"bare-{trial}-{n}"
        directory = workdir / name
        directory.mkdir(mode=0o755)
        disks.create(directory, cached_root(cloud), "raw", 1, SWAP_MB)
        (directory / "domain.xml").write_text(
            renamed(template, template_dir, cloud.nc.name, directory)
        )
        made.append((name, directory))
    return made


def cached_root(cloud: Cloud) -> Path:
    """The tiny guest's root image in the NC's cache (named by its digest)."""
    manifest = json.loads((guest.build() / "manifest.json").read_text())
    [digest] = [f["digest"] for f in manifest["files"] if f["name"] == "root.img"]
    return cloud.nc.workdir / "images" / digest.removeprefix("sha256:")


def bare_run(domains: list[tuple[str, Path]]) -> float:
    """`virsh create` of every domain at once → libvirt reports all running; the
    seconds. The domains are destroyed after."""
    conn = libvirt.open("qemu:///system")
    create = [
        partial(
            subprocess.run,
            ["virsh", "-q", "create", str(d / "domain.xml")],
            check=True,
            capture_output=True,
        )
        for _, d in domains
    ]
    started = time.monotonic()
    run_all(create)
    running = libvirt.VIR_DOMAIN_RUNNING
    while not all(conn.lookupByName(n).state()[0] == running for n, _ in domains):
        time.sleep(POLL_S / 5)
    elapsed = time.monotonic() - started
    for name, directory in domains:
        conn.lookupByName(name).destroy()
        shutil.rmtree(directory, ignore_errors=True)
    conn.close()
    return elapsed


def trial(
    cloud: Cloud, count: int, domains: list[tuple[str, Path]], ours_first: bool
) -> tuple[float, float, float]:
    """One trial of each side, in the order given; their seconds (mallee, bare), and
    when mallee's RunInstances was answered."""

    def ours() -> tuple[float, float]:
        seconds, answered, ids = cloud.run(count)
        cloud.end(ids)
        return seconds, answered

    if ours_first:
        mallee, answered = ours()
        return mallee, bare_run(domains), answered
    bare = bare_run(domains)
    mallee, answered = ours()
    return mallee, bare, answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    with bench_host() as (workdir, pki):
        cloud = Cloud(workdir, pki)
        try:
            _, _, [warm] = cloud.run(1)  # the NC's cache warm; its domain the template
            template_dir = cloud.nc.instance_dir / warm
            template = (template_dir / "domain.xml").read_text()
            cloud.end([warm])
            for count in (1, 8):
                sides: dict[str, list[float]] = {"mallee": [], "bare": [], "answered": []}
                for n in range(args.trials):
                    domains = bare_domains(cloud, workdir, template, template_dir, count, n)
                    mallee, bare, answered = trial(cloud, count, domains, ours_first=n % 2 == 0)
                    sides["mallee"].append(mallee)
                    sides["bare"].append(bare)
                    sides["answered"].append(answered)
                    print(
                        f"{count} at once, trial {n + 1}: mallee {mallee:.2f} s "
                        f"(answered at {answered:.2f} s), bare {bare:.2f} s",
                        flush=True,
                    )
                results[str(count)] = sides
        finally:
            cloud.stop()
    report(results, args.out)


def report(results: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "clc_run.json").write_text(json.dumps(results, indent=2))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    print(f"{'case':>10} {'side':>7} {'p50 (s)':>8} {'p98 (s)':>8}")
    for ax, (count, sides) in zip(axes, sorted(results.items()), strict=True):
        for side in ("mallee", "bare"):
            ordered = sorted(sides[side])
            ax.step(
                ordered,
                [(i + 1) / len(ordered) * 100 for i in range(len(ordered))],
                where="post",
                label=side,
            )
            print(
                f"{count + ' at once':>10} {side:>7} {percentile(sides[side], 50):>8.2f} "
                f"{percentile(sides[side], 98):>8.2f}"
            )
        answered = sides["answered"]
        print(
            f"{'':>10} of mallee's: the aws CLI had RunInstances' answer at p50 "
            f"{percentile(answered, 50):.2f} s, p98 {percentile(answered, 98):.2f} s"
        )
        ax.set_title(f"{count} instance(s) at once")
        ax.set_xlabel("seconds until running")
        ax.set_ylabel("% of trials")
        ax.legend()
        ax.grid(True, alpha=0.3)
        budget = percentile(sides["bare"], 98) + TARGETS[int(count)]
        ok = percentile(sides["mallee"], 98) <= budget
        print(
            f"{'':>10} target: mallee p98 <= bare p98 + {TARGETS[int(count)]:.0f} s = "
            f"{budget:.2f} s: {verdict(ok)}"
        )
    figure.tight_layout()
    figure.savefig(out / "clc_run.png", dpi=100)
    print(f"wrote {out / 'clc_run.json'} and {out / 'clc_run.png'}")


if __name__ == "__main__":
    main()
