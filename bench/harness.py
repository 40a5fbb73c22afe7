"""What the benchmarks share: a libvirtd, the cloud's PKI and a 0755 work folder; and for
the boot benchmarks, an NC that has booted the tiny guest once, the same domain started
by hand with `virsh create`, and one way of waiting for boot markers on both."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from mallee.common.rpc import RpcClient
from mallee.nc import disks
from tests.support import daemons, guest
from tests.support.daemons import NcDaemon, Pki
from tests.support.guest import wait_until
from tests.support.http import serve_directory
from tests.support.kvm import make_kvm_usable_by_qemu

POLL_S = 0.1  # how often both sides' consoles are looked at
SWAP_MB = 64  # the NC's and the bare domains' swap disk


@contextmanager
def bench_host() -> Iterator[tuple[Path, Pki]]:
    """A work folder QEMU can read and the PKI; /dev/kvm usable by QEMU's user (else
    every domain takes a minute to start); libvirtd started if none answers."""
    make_kvm_usable_by_qemu()
    pids = [] if daemons.libvirt_answers() else daemons.start_libvirtd()
    workdir = Path(tempfile.mkdtemp(prefix="mallee-bench-", dir="/var/tmp"))
    workdir.chmod(0o755)
    try:
        yield workdir, daemons.make_pki(workdir / "pki")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        daemons.stop_pids(pids)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


median = statistics.median


def wait_for_all(
    conditions: Mapping[str, Callable[[], bool]], started: float, timeout_s: float
) -> dict[str, float]:
    """Look at every pending condition each POLL_S; return, per name, the seconds from
    ``started`` (a time.monotonic()) until it held."""
    done: dict[str, float] = {}
    while len(done) < len(conditions):
        for name, condition in conditions.items():
            if name not in done and condition():
                done[name] = time.monotonic() - started
        if len(done) < len(conditions):
            if time.monotonic() - started > timeout_s:
                pending = sorted(set(conditions) - set(done))
                raise TimeoutError(f"no boot marker after {timeout_s:.0f} s from {pending}")
            time.sleep(POLL_S)
    return done


def run_all(actions: Sequence[Callable[[], Any]]) -> None:
    """Run the actions at once, each in its own thread, as a CC dispatches a batch."""
    with ThreadPoolExecutor(len(actions)) as pool:
        for future in [pool.submit(action) for action in actions]:
            future.result()


@dataclass(frozen=True)
class BareDomain:
    """The NC's domain for the tiny guest, started by hand with `virsh create` from its
    own folder, its disks made beforehand (as an admin would prepare them)."""

    name: str
    directory: Path

    def start(self) -> None:
        subprocess.run(["virsh", "-q", "create", str(self.directory / "domain.xml")], check=True)

    def booted(self) -> bool:
        console = self.directory / "console.log"
        return console.exists() and guest.MARKER in console.read_text(errors="replace")

    def remove(self) -> None:
        subprocess.run(["virsh", "-q", "destroy", self.name], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class BootBench:
    """An NC whose image cache holds the tiny guest, and the domain XML it rendered."""

    nc: NcDaemon
    image: guest.GuestImage
    workdir: Path
    template: str  # the warm-up instance's domain XML
    template_dir: Path  # the warm-up instance's folder, named in the template
    cached_root: Path  # the root image in the NC's cache
    poller: RpcClient  # unchecked: time the NC, not the OpenAPI checker

    def launch(self, instance_id: str) -> None:
        """runInstance; the answer may come before the instance runs."""
        self.nc.client.call("POST", "/v1/instances", guest.run_request(instance_id, self.image))

    def nc_booted(self, instance_id: str) -> Callable[[], bool]:
        """Whether getConsoleOutput shows the boot marker, as a user would look."""
        path = f"/v1/instances/{instance_id}/console"
        return lambda: guest.MARKER in self.poller.call("GET", path)["output"]

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Terminate, and wait for the domains to be gone so the next run has the CPUs."""
        for instance_id in instance_ids:
            self.nc.client.call("DELETE", f"/v1/instances/{instance_id}")
        wait_until(lambda: not self.nc.domains(), 60, "the NC's domains to go")

    def bare(self, name: str) -> BareDomain:
        """A domain like the NC's, in its own folder with its own disks, not started."""
        directory = self.workdir / name
        directory.mkdir(mode=0o755)
        disks.create(directory, self.cached_root, "raw", 1, SWAP_MB)
        xml = renamed(self.template, self.template_dir, self.nc.name, directory)
        (directory / "domain.xml").write_text(xml)
        return BareDomain(name, directory)


def renamed(template: str, template_dir: Path, node: str, directory: Path) -> str:
    """An NC's domain XML as the bare domain named after ``directory``: its folder,
    name and UUID its own, and not marked as the NC's."""
    [uuid] = re.findall(r"<uuid>([^<]+)</uuid>", template)
    return (
        template.replace(str(template_dir), str(directory))
        .replace(template_dir.name, directory.name)
        .replace(uuid, str(uuid4()))
        .replace(f"node='{node}'", "node='bench-bare'")
    )


@contextmanager
def boot_bench(**nc_settings: Any) -> Iterator[BootBench]:
    """A real `mallee-nc` on qemu:///system that has booted the tiny guest once (warm
    image cache); its domains are destroyed at the end."""
    image_dir = guest.build()
    with bench_host() as (workdir, pki), serve_directory(image_dir) as server:
        image = guest.published(image_dir, server.url)
        (workdir / "nc").mkdir(mode=0o755)
        nc = NcDaemon(workdir / "nc", pki, "bench-nc", swap_mb=SWAP_MB, **nc_settings)
        nc.start()
        try:
            poller = RpcClient(nc.url, pki.cc)
            warm = "i-00000000000000000"
            nc.client.call("POST", "/v1/instances", guest.run_request(warm, image))
            guest.wait_for_console(nc.client, warm, guest.MARKER)
            template_dir = nc.instance_dir / warm
            bench = BootBench(
                nc=nc,
                image=image,
                workdir=workdir,
                template=(template_dir / "domain.xml").read_text(),
                template_dir=template_dir,
                cached_root=nc.workdir / "images" / image.image["digest"].removeprefix("sha256:"),
                poller=poller,
            )
            bench.terminate([warm])
            yield bench
        finally:
            nc.cleanup()


@dataclass
class Paired:
    """Per-round times of the NC and of bare libvirt, and their ratios."""

    nc: list[float]
    bare: list[float]

    @property
    def ratios(self) -> list[float]:
        return [n / b for n, b in zip(self.nc, self.bare, strict=True)]


def interleaved(
    rounds: int, nc: Callable[[int], float], bare: Callable[[int], float], label: str
) -> Paired:
    """``rounds`` rounds of both sides, the side that goes first alternating (this
    machine is noisy: a ratio is only fair within one round); each round printed."""
    times = Paired([], [])
    print(f"{label:>5} {'nc (s)':>8} {'virsh (s)':>10} {'ratio':>6}")
    for r in range(1, rounds + 1):
        if r % 2:
            t_nc, t_bare = nc(r), bare(r)
        else:
            t_bare = bare(r)
            t_nc = nc(r)
        times.nc.append(t_nc)
        times.bare.append(t_bare)
        print(f"{r:>5} {t_nc:>8.2f} {t_bare:>10.2f} {t_nc / t_bare:>6.3f}", flush=True)
    return times
