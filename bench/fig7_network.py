"""The seed's Figure 7 on this machine: TCP throughput (iperf3) and ping RTT between two
endpoints attached exactly as instance NICs are, on one host, across two hosts natively,
and across two hosts over each private overlay.

Hosts are network namespaces joined by a veth pair (their "private" network), GRO on at
both ends as physical NICs have it (a veth's is off by default). An
instance is a namespace behind a veth named as an instance's tap, a port of its VLAN's
bridge, made by the NC's own code (``Networks``); guests under TCG could not fill a link.

- same host: both endpoints on one host's VLAN bridge;
- native: one endpoint per host, each host's bridge holding its underlay NIC (as a
  public NIC in SYSTEM mode is on the site's LAN);
- vxlan: the bridges joined by the NC's ``VxlanOverlay`` (VNI = VLAN, a flood entry to
  the other host; the endpoints' MTU 1450, as the overlay's DHCP says);
- vde-tcp: the seed's: a ``vde_switch`` per host (``VdeSwitch``), each bridge on an
  access port by a tap, the switches wired over TCP (``dpipe vde_plug = socat``);
- vde-tcp-tuned: the same wire with socat reading 64 KiB at a time and TCP_NODELAY;
- vde-udp: the same switches wired by vdeplug4's UDP transport (one datagram a frame);
- plug-udp: no switch at all, each bridge's tap wired straight to the other's over UDP
  (not a deployable layout: it shows what the switches cost).

Each case: ``--trials`` iperf3 runs of ``--seconds`` each and as many pings of 5
(their mean); mean and 95 % interval (normal approximation). Figures go to
``bench/results/fig7_network.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mallee.common import host
from mallee.common.networks import Networks
from mallee.common.overlay import VxlanOverlay
from mallee.common.vde import VdeSwitch
from tests.support.hosts import attach, link, namespaces, ns, pings, run_in
from tests.support.network import inside

RESULTS = Path(__file__).with_name("results")
VLAN = 10
UNDERLAY = {"a": "10.212.0.1", "b": "10.212.0.2"}
ENDPOINTS = {"x": "10.213.0.1", "y": "10.213.0.2"}
TARGETS = {"vxlan": 0.9, "vde-tcp": 0.1, "vde-tcp-tuned": 0.1, "vde-udp": 0.1}
CASES = ("same host", "native", "vxlan", "vde-tcp", "vde-tcp-tuned", "vde-udp", "plug-udp")


def vlan_bridge(on: str) -> str:
    with inside(ns(on)):
        return str(Networks("mlvlan").start(VLAN)["bridge"])


def build(case: str, workdir: Path) -> Callable[[], None]:
    """Set ``case`` up; what undoes its processes (the namespaces go with the hosts)."""
    if case == "same host":
        bridge = vlan_bridge("a")
        attach("x", "a", bridge, ENDPOINTS["x"])
        attach("y", "a", bridge, ENDPOINTS["y"])
        return lambda: None
    bridges = {h: vlan_bridge(h) for h in ("a", "b")}  # one name on both hosts
    lan = bridges["a"] if case == "native" else ""
    link("a", "b", UNDERLAY["a"], UNDERLAY["b"], enslave_to=lan)
    for h in ("a", "b"):  # as a physical NIC has it (a veth's is off by default)
        run_in(h, "ethtool", "-K", "eth0", "gro", "on")
    if case == "native":
        attach("x", "a", bridges["a"], ENDPOINTS["x"])
        attach("y", "b", bridges["b"], ENDPOINTS["y"])
        return lambda: None
    if case == "vxlan":
        for h, peer in (("a", "b"), ("b", "a")):
            overlay = VxlanOverlay(UNDERLAY[h])
            with inside(ns(h)):
                overlay.join(VLAN, bridges[h], [UNDERLAY[peer]])
        attach("x", "a", bridges["a"], ENDPOINTS["x"], mtu=overlay.mtu)
        attach("y", "b", bridges["b"], ENDPOINTS["y"], mtu=overlay.mtu)
        return lambda: None
    if case == "plug-udp":  # no switch: each bridge's tap wired straight to the other's
        plugs = {h: VdeSwitch(workdir / f"vde-{h}") for h in ("a", "b")}
        for h, (mine, theirs, peer) in (("a", (17001, 17002, "b")), ("b", (17002, 17001, "a"))):
            with inside(ns(h)):
                plugs[h].plug(f"tap://mlvd{VLAN}", f"udp://{mine}->{UNDERLAY[peer]}:{theirs}")
        time.sleep(0.5)
        for h in ("a", "b"):
            host.run("ip", "-n", ns(h), "link", "set", f"mlvd{VLAN}", "master", bridges[h], "up")
        attach("x", "a", bridges["a"], ENDPOINTS["x"])
        attach("y", "b", bridges["b"], ENDPOINTS["y"])
        switches = plugs
    else:
        switches = wired_switches(case, workdir, bridges)

    def stop() -> None:
        for switch in switches.values():
            switch.stop()

    return stop


def wired_switches(case: str, workdir: Path, bridges: dict[str, str]) -> dict[str, VdeSwitch]:
    """A switch per host, the VLAN's bridge on an access port, a wire between them."""
    switches = {h: VdeSwitch(workdir / f"vde-{h}") for h in ("a", "b")}
    for h, switch in switches.items():
        with inside(ns(h)):
            switch.start()
            switch.join(VLAN, bridges[h], port=1)
            switch.trunk(2, [VLAN])
    wire_a, wire_b = (f"vde://{switches[h].control}[2]" for h in ("a", "b"))
    # socat's defaults: 8 KiB reads, Nagle on; tuned: 64 KiB reads, TCP_NODELAY
    tuned = case.startswith("vde-tcp-tuned")
    socat = ["socat", "-b", "65536"] if tuned else ["socat"]
    options = ",nodelay" if tuned else ""
    with inside(ns("a")):
        if case.startswith("vde-tcp"):
            listen = [*socat, "-", f"TCP-LISTEN:17001,reuseaddr{options}"]
            switches["a"].plug(wire_a, pipe_to=listen)
        else:
            switches["a"].plug(wire_a, f"udp://17001->{UNDERLAY['b']}:17002")
    time.sleep(0.3)  # the listener up
    with inside(ns("b")):
        if case.startswith("vde-tcp"):
            connect = [*socat, "-", f"TCP:{UNDERLAY['a']}:17001{options}"]
            switches["b"].plug(wire_b, pipe_to=connect)
        else:
            switches["b"].plug(wire_b, f"udp://17002->{UNDERLAY['a']}:17001")
    attach("x", "a", bridges["a"], ENDPOINTS["x"])
    attach("y", "b", bridges["b"], ENDPOINTS["y"])
    return switches


def measure(trials: int, seconds: float) -> dict[str, list[float]]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns("y"), "iperf3", "-s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        gbits, rtts = [], []
        for _ in range(trials):
            answer = json.loads(
                run_in("x", "iperf3", "-c", ENDPOINTS["y"], "-t", str(seconds), "-J")
            )
            gbits.append(answer["end"]["sum_received"]["bits_per_second"] / 1e9)
            pinged = run_in("x", "ping", "-c", "5", "-i", "0.05", "-q", ENDPOINTS["y"])
            match = re.search(r"= [\d.]+/([\d.]+)/", pinged)
            assert match, pinged
            rtts.append(float(match.group(1)))
        return {"gbit_s": gbits, "rtt_ms": rtts}
    finally:
        server.terminate()
        server.wait(5)


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval."""
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, 1.96 * spread / len(values) ** 0.5


def plot(figures: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(figures)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in ((left, "gbit_s", "TCP throughput (Gbit/s)"),
                             (right, "rtt_ms", "ping RTT (ms)")):  # fmt: skip
        means, errors = zip(*(summary(figures[c][key]) for c in cases), strict=True)
        axis.bar(cases, means, yerr=errors, capsize=4, color="#4a7ab5")
        axis.set_ylabel(label)
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle("Instance NICs on one host, across hosts natively and over the overlays")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {}
    for case in args.cases:
        workdir = Path(tempfile.mkdtemp(prefix="mallee-bench-fig7-"))
        with namespaces("a", "b", "x", "y"):
            stop = build(case, workdir)
            try:
                deadline = time.monotonic() + 20
                while not pings("x", ENDPOINTS["y"]):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{case}: the endpoints do not reach each other")
                figures[case] = measure(args.trials, args.seconds)
            finally:
                stop()
                shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fig7_network.json").write_text(json.dumps(figures, indent=1))
    plot(figures, RESULTS / "fig7_network.png")
    print(f"{args.trials} trials per case: iperf3 TCP for {args.seconds:g} s, ping x5")
    print(f"{'case':>10} {'Gbit/s':>16} {'RTT (ms)':>16} {'/ native':>9}")
    native = summary(figures["native"]["gbit_s"])[0] if "native" in figures else None
    for case, values in figures.items():
        rate, rate_error = summary(values["gbit_s"])
        rtt, rtt_error = summary(values["rtt_ms"])
        against = f"{rate / native:9.3f}" if native else f"{'':9}"
        print(
            f"{case:>10} {rate:>9.2f} ± {rate_error:<4.2f} {rtt:>9.3f} ± {rtt_error:<5.3f}{against}"
        )
    if native:
        for case, target in TARGETS.items():
            if case in figures:
                ratio = summary(figures[case]["gbit_s"])[0] / native
                verdict = "meets the target" if ratio >= target else "MISSES the target"
                print(f"{case} / native {ratio:.3f}, target >= {target}: {verdict}")


if __name__ == "__main__":
    main()
