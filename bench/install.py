"""The one-button install's time (issue 9), per phase, beside its targets:

- install.yml on the end-to-end test bed (tests/support/testbed.py: four
  systemd-nspawn hosts, a cloud head, a cluster head and two workers reached through
  it, over SSH): the first install, then a second run that changes nothing.
  Target: the second run in 60 s or less.
- tools/cloud-in-a-box, the README's first command, from no box to an instance running,
  then run again. Warm: the controller keeps the debootstrapped tree, the wheels and the
  tiny guest image. Cold (--cold): those, and pip's cache, are removed first. The box's
  Debian packages are downloaded afresh either way (each box is new).
  Targets: ready in 3 minutes warm, 10 minutes cold.

Phases: install.yml's plays, and within the play that installs the hosts each role
(bench/callback_plugins/mallee_phases.py); cloud-in-a-box's own phase lines. Hosts run
in parallel: a phase ends when its last host is done. Run as root from the checkout,
inside .venv: python -m bench.install [--part bed|box|all] [--cold].
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import verdict
from tests.support import testbed

REPO = testbed.REPO
SECOND_RUN_TARGET_S = 60.0
BOX_WARM_TARGET_S, BOX_COLD_TARGET_S = 180.0, 600.0


def timed_playbook(inventory: Path, name: str) -> tuple[float, list[tuple[str, float]]]:
    """Seconds ``ansible-playbook -i inventory name`` took, and its phases."""
    with tempfile.NamedTemporaryFile(suffix=".json") as phases:
        env = {
            **os.environ,
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "bench" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "mallee_phases",
            "MALLEE_PHASES_FILE": phases.name,
        }
        started = time.monotonic()
        run = subprocess.run(
            ["ansible-playbook", "-i", str(inventory), name],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        took = time.monotonic() - started
        if run.returncode:
            raise SystemExit(f"{name} failed:\n{run.stdout[-4000:]}")
        return took, [(n, s) for n, s in json.loads(Path(phases.name).read_text())]


def show(title: str, took: float, phases: list[tuple[str, float]]) -> None:
    """Each phase's total, in the order phases first began (a role's tasks interleave
    with the common tasks it includes)."""
    totals: dict[str, float] = {}
    for name, seconds in phases:
        totals[name] = totals.get(name, 0.0) + seconds
    print(f"\n{title}: {took:.0f} s")
    for name, seconds in totals.items():
        print(f"  {seconds:7.1f} s  {name}")


def bench_bed() -> None:
    with tempfile.TemporaryDirectory(prefix="mallee-bench-bed-") as folder:
        booting = time.monotonic()
        with testbed.test_bed(Path(folder)) as inventory:
            print(f"test bed booted in {time.monotonic() - booting:.0f} s (4 hosts)")
            first, first_phases = timed_playbook(inventory, "install.yml")
            show("first install (install.yml)", first, first_phases)
            second, second_phases = timed_playbook(inventory, "install.yml")
            show("second run, no change (install.yml)", second, second_phases)
    print(
        f"\nsecond run: {second:.0f} s; target <= {SECOND_RUN_TARGET_S:.0f} s:"
        f" {verdict(second <= SECOND_RUN_TARGET_S)}"
    )


def box_run() -> tuple[float, list[tuple[str, float]]]:
    """Seconds tools/cloud-in-a-box took, and its phases (its '== HH:MM:SS' lines)."""
    started = time.monotonic()
    run = subprocess.run(
        [str(REPO / "tools" / "cloud-in-a-box")], cwd=REPO, capture_output=True, text=True,
        timeout=3600,
    )  # fmt: skip
    took = time.monotonic() - started
    if run.returncode:
        raise SystemExit(f"tools/cloud-in-a-box failed:\n{run.stdout[-4000:]}")
    marks = re.findall(r"^== (\d\d):(\d\d):(\d\d) cloud-in-a-box: (.*)$", run.stdout, re.M)
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s, _ in marks]
    ends = [*seconds[1:], max(seconds[-1], seconds[0] + round(took))]
    spans = zip(marks, seconds, ends, strict=True)
    phases = [(m[3], float((end - start) % 86400)) for m, start, end in spans]
    return took, phases


def bench_box(cold: bool) -> None:
    subprocess.run([str(REPO / "tools" / "cloud-in-a-box"), "stop"], check=True)
    if cold:
        for cache in ("/var/cache/mallee-nspawn", Path.home() / ".mallee" / "mallee" / "wheels",
                      Path.home() / ".mallee" / "mallee" / "images"):  # fmt: skip
            shutil.rmtree(cache, ignore_errors=True)
        subprocess.run(["pip", "cache", "purge"], capture_output=True)
    try:
        first, phases = box_run()
        show(f"cloud in a box, {'cold' if cold else 'warm'} caches", first, phases)
        again, again_phases = box_run()
        show("cloud in a box, run again", again, again_phases)
    finally:
        subprocess.run([str(REPO / "tools" / "cloud-in-a-box"), "stop"], check=True)
    target = BOX_COLD_TARGET_S if cold else BOX_WARM_TARGET_S
    print(
        f"\ncloud in a box ({'cold' if cold else 'warm'}): {first:.0f} s;"
        f" target <= {target:.0f} s: {verdict(first <= target)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["bed", "box", "all"], default="all")
    parser.add_argument("--cold", action="store_true", help="empty the box's caches first")
    args = parser.parse_args()
    if args.part in ("bed", "all"):
        bench_bed()
    if args.part in ("box", "all"):
        bench_box(args.cold)


if __name__ == "__main__":
    main()
