"""Security group changes to effect on packets, with 100 instances in 20 groups: the time
from an AuthorizeSecurityGroupIngress sent (boto3) to the first TCP connection it lets
through, and from the RevokeSecurityGroupIngress sent to the first connection dropped.

A real `mallee-clc` → `mallee-cc` → two `mallee-nc` on libvirt's test driver (so 100
instances need no CPU), each NC with its public NICs on one bridge. The 100 instances
run in 20 groups of 5; each group allows TCP from its own members and from a /24 (so
every node holds 20 named sets and 200 chains). One instance is made real as the NCs
see NICs: a network namespace behind a veth named as its tap, with its MAC and address,
accepting on a port; a second namespace on the bridge is the "public" side. Each trial
authorizes that port from the public side to the probe's group, connects until a
connection is made, revokes, and connects until one is dropped; connection attempts
wait at most 20 ms each (the resolution of the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import bench_host, percentile, verdict
from mallee.clc.instances import mac_of
from mallee.common import host
from mallee.nc.service import tap_name
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon, Pki, free_port, stop_all
from tests.support.guest import wait_until
from tests.support.network import connect, hanging_up

INSTANCES, GROUPS = 100, 20
P99_TARGET_S = 1.0
SUBNET = "10.211.0.0/16"
CLIENT = "10.211.255.1"
PORT = 7000
ATTEMPT_S = 0.02
BRIDGE, CLIENT_NS, PROBE_NS = "mlbsgbr", "mallee-bsg-client", "mallee-bsg-probe"


@contextmanager
def lan() -> Iterator[None]:
    """The bridge the NCs put public NICs on, and the public side's namespace on it."""
    try:
        host.run("ip", "link", "add", BRIDGE, "type", "bridge")
        host.run("ip", "link", "set", BRIDGE, "up")
        host.run("ip", "netns", "add", CLIENT_NS)
        host.run("ip", "link", "add", "mlbsgc", "type", "veth", "peer", "name", "eth0",
                 "netns", CLIENT_NS)  # fmt: skip
        host.run("ip", "link", "set", "mlbsgc", "master", BRIDGE, "up")
        host.run("ip", "-n", CLIENT_NS, "addr", "add", f"{CLIENT}/16", "dev", "eth0")
        host.run("ip", "-n", CLIENT_NS, "link", "set", "eth0", "up")
        yield
    finally:
        for argv in (("link", "del", BRIDGE), ("link", "del", "mlbsgc")):
            with contextlib.suppress(Exception):
                host.run("ip", *argv)
        with contextlib.suppress(Exception):
            host.run("ip", "netns", "del", CLIENT_NS)


@contextmanager
def probe(instance_id: str, private_ip: str) -> Iterator[None]:
    """The instance's NIC as its node sees it: a veth named as its tap, on the bridge,
    whose other end (in a namespace) has the instance's MAC and address and accepts."""
    tap = tap_name(instance_id, "public")
    try:
        host.run("ip", "netns", "add", PROBE_NS)
        host.run("ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0",
                 "netns", PROBE_NS)  # fmt: skip
        host.run("ip", "link", "set", tap, "master", BRIDGE, "up")
        host.run("ip", "-n", PROBE_NS, "link", "set", "eth0", "address", mac_of(private_ip))
        host.run("ip", "-n", PROBE_NS, "addr", "add", f"{private_ip}/16", "dev", "eth0")
        host.run("ip", "-n", PROBE_NS, "link", "set", "eth0", "up")
        with hanging_up(PROBE_NS, PORT):
            yield
    finally:
        with contextlib.suppress(Exception):
            host.run("ip", "link", "del", tap)
        with contextlib.suppress(Exception):
            host.run("ip", "netns", "del", PROBE_NS)


def connects(address: str) -> bool:
    connection = connect(CLIENT_NS, address, PORT, ATTEMPT_S)
    if connection is None:
        return False
    connection.close()
    return True


def until(address: str, wanted: bool, limit_s: float = 10.0) -> float:
    started = time.perf_counter()
    while connects(address) is not wanted:
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"no {'connection' if wanted else 'drop'} after {limit_s} s")
    return time.perf_counter() - started


def measure(workdir: Path, pki: Pki, trials: int) -> dict[str, list[float]]:
    daemons: list[Any] = []
    try:
        ncs = []
        for n in range(2):
            (workdir / f"nc{n}").mkdir(mode=0o755)
            ncs.append(
                NcDaemon(
                    workdir / f"nc{n}",
                    pki,
                    f"bench-sg-{n}",
                    libvirt_uri="test:///default",
                    hypervisor="qemu",
                    public_bridge=BRIDGE,
                    cpu_overcommit=64.0,
                    swap_mb=0,
                )
            )
        for name in ("cc", "clc"):
            (workdir / name).mkdir(mode=0o755)
        cc = CcDaemon(workdir / "cc", pki, poll_interval_s=5.0, scheduler="round-robin")
        clc = ClcDaemon(
            workdir / "clc",
            pki,
            instance_types=["t1.nano 1 64 1"],
            instance_quota=0,
            lease_hours=0.0,
            poll_interval_s=5.0,
            private_subnet=SUBNET,
            metadata_port=free_port(),
        )
        for daemon in (*ncs, cc, clc):
            daemon.start()
            daemons.append(daemon)
        for nc in ncs:
            cc.client.call("POST", "/v1/nodes", {"name": nc.name, "url": nc.url})
        clc.admin("cluster", "add", "zone-a", cc.url)
        disk = workdir / "blank.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        emi = clc.add_disk("blank", disk)
        ec2 = clc.ec2("bench")
        groups = []
        for g in range(GROUPS):
            group = ec2.create_security_group(GroupName=f"g{g}", Description="bench")["GroupId"]
            ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                     "UserIdGroupPairs": [{"GroupId": group}]},
                    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
                     "IpRanges": [{"CidrIp": f"10.{g}.0.0/24"}]},
                ],
            )  # fmt: skip
            groups.append(group)
        per_group = INSTANCES // GROUPS
        ids = []
        for group in groups:
            ran = ec2.run_instances(
                ImageId=emi, MinCount=per_group, MaxCount=per_group, SecurityGroupIds=[group]
            )
            ids += [i["InstanceId"] for i in ran["Instances"]]
        ec2.get_waiter("instance_running").wait(
            InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        [first] = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"]
        address = first["PrivateIpAddress"]
        rule = {
            "IpProtocol": "tcp",
            "FromPort": PORT,
            "ToPort": PORT,
            "IpRanges": [{"CidrIp": f"{CLIENT}/32"}],
        }
        figures: dict[str, list[float]] = {"authorize": [], "revoke": [], "answered": []}
        with probe(ids[0], address):
            wait_until(lambda: not connects(address), 10, "the probe to be closed")
            for _ in range(trials):
                started = time.perf_counter()
                ec2.authorize_security_group_ingress(GroupId=groups[0], IpPermissions=[rule])
                figures["answered"].append(time.perf_counter() - started)
                figures["authorize"].append(time.perf_counter() - started + until(address, True))
                started = time.perf_counter()
                ec2.revoke_security_group_ingress(GroupId=groups[0], IpPermissions=[rule])
                figures["revoke"].append(time.perf_counter() - started + until(address, False))
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        return figures
    finally:
        stop_all(daemons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    with bench_host() as (workdir, pki), lan():
        figures = measure(workdir, pki, args.trials)
    print(
        f"{INSTANCES} instances in {GROUPS} groups on 2 nodes, {args.trials} trials; "
        f"connection attempts every {ATTEMPT_S * 1000:.0f} ms at most"
    )
    print(f"{'change':>24} {'p50 (s)':>8} {'p99 (s)':>8} {'max (s)':>8}")
    rows = (
        ("authorize answered", figures["answered"]),
        ("authorize → let through", figures["authorize"]),
        ("revoke → dropped", figures["revoke"]),
    )
    for name, values in rows:
        print(
            f"{name:>24} {percentile(values, 50):>8.3f} {percentile(values, 99):>8.3f} "
            f"{max(values):>8.3f}"
        )
    worst = max(percentile(figures["authorize"], 99), percentile(figures["revoke"], 99))
    print(
        f"p99 change → effective {worst:.3f} s, target <= {P99_TARGET_S:.0f} s: "
        f"{verdict(worst <= P99_TARGET_S)}"
    )


if __name__ == "__main__":
    main()
