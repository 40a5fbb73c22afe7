"""Integration fixtures: a real libvirtd, real `mallee-nc` daemons under gunicorn with
mutual TLS, and the project's tiny guest image served over HTTP.

Needs root (libvirtd, bridges) on a host prepared by ``tools/prepare-host``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import daemons
from tests.support import guest as guest_image
from tests.support import postgres as postgres_server
from tests.support.cluster import NetworkedCloud, register
from tests.support.daemons import TEST_BED_HERE, CcDaemon, ClcDaemon, NcDaemon, Pki, free_port
from tests.support.guest import GuestImage
from tests.support.hosts import head_link, namespaces, run_in, underlay
from tests.support.http import serve_directory
from tests.support.kvm import make_kvm_usable_by_qemu
from tests.support.network import instance_network


@pytest.fixture(scope="session", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (libvirtd, qemu, bridges)")


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """The host's libvirtd if one answers, else one started here and stopped after;
    /dev/kvm made usable by QEMU's user first, or every domain takes a minute to start."""
    make_kvm_usable_by_qemu()
    if daemons.libvirt_answers():
        yield daemons.LIBVIRT_URI
        return
    pids = daemons.start_libvirtd()
    yield daemons.LIBVIRT_URI
    daemons.stop_pids(pids)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return daemons.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def daemons_started() -> Iterator[list[daemons.Daemon]]:
    """Every daemon a test starts; stopped and cleaned up after it."""
    started: list[daemons.Daemon] = []
    yield started
    daemons.stop_all(started)
    for daemon in started:
        shutil.rmtree(daemon.workdir, ignore_errors=True)


def _workdir() -> Path:
    """A 0755 folder under /var/tmp: QEMU's user cannot enter pytest's 0700 ones."""
    workdir = Path(tempfile.mkdtemp(prefix="mallee-it-", dir="/var/tmp"))
    workdir.chmod(0o755)
    return workdir


@pytest.fixture
def nc_factory(
    libvirtd: str, pki: Pki, daemons_started: list[daemons.Daemon]
) -> Callable[..., NcDaemon]:
    """Start NCs on demand, each with its own folders and node name."""

    def start(**settings: Any) -> NcDaemon:
        workdir = _workdir()
        daemon = NcDaemon(workdir, pki, f"it-{workdir.name[-8:]}", **settings)
        daemons_started.append(daemon)
        daemon.start()
        return daemon

    return start


@pytest.fixture
def cc_factory(pki: Pki, daemons_started: list[daemons.Daemon]) -> Callable[..., CcDaemon]:
    """Start CCs on demand; ``cc_factory(state_dir=...)`` restarts one on old state."""

    def start(**settings: Any) -> CcDaemon:
        daemon = CcDaemon(_workdir(), pki, **settings)
        daemons_started.append(daemon)
        daemon.start()
        return daemon

    return start


@pytest.fixture
def clc_factory(pki: Pki, daemons_started: list[daemons.Daemon]) -> Callable[..., ClcDaemon]:
    """Start CLCs on demand; ``clc_factory(database_url=...)`` restarts one on old state."""

    def start(**settings: Any) -> ClcDaemon:
        daemon = ClcDaemon(_workdir(), pki, **settings)
        daemons_started.append(daemon)
        daemon.start()
        return daemon

    return start


@pytest.fixture(scope="session")
def guest() -> Iterator[GuestImage]:
    """The tiny guest, built once and served over HTTP for the whole session."""
    directory = guest_image.build()
    with serve_directory(directory) as server:
        yield guest_image.published(directory, server.url)


@pytest.fixture
def networked_cloud(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    guest: GuestImage,
    tmp_path: Path,
) -> Iterator[NetworkedCloud]:
    """A CLC with one zone of two real NCs (round-robin) and the tiny guest registered
    (its emi id), on a network whose router redirects 169.254.169.254 to the CLC's
    metadata port, as a cluster's does; addresses 192.0.2.33 to .38 to allocate."""
    port = free_port()
    with instance_network(tmp_path, port) as net:
        ncs = [nc_factory(public_bridge=net.bridge), nc_factory(public_bridge=net.bridge)]
        cc = cc_factory(scheduler="round-robin")
        register(cc, *ncs)
        clc = clc_factory(
            listen="0.0.0.0",
            metadata_port=port,
            private_subnet=net.subnet,
            instance_quota=0,
            public_addresses=["192.0.2.32/29"],
        )
        clc.admin("cluster", "add", "zone-a", cc.url)
        yield NetworkedCloud(clc, clc.add_image("ttylinux", guest.directory), ncs, net, cc)


@pytest.fixture(scope="session")
def postgres() -> Iterator[postgres_server.PostgresServer]:
    """A PostgreSQL server of the session's own (Debian's binaries); each test makes its
    own database on it."""
    with postgres_server.running() as server:
        yield server


@pytest.fixture
def postgres_database(postgres: postgres_server.PostgresServer) -> str:
    """The SQLAlchemy URL of a new, empty database on the session's server."""
    return postgres.create_database()


@pytest.fixture
def private_libvirtd(libvirtd: str) -> Iterator[daemons.PrivateLibvirtd]:
    """A libvirtd of this test's own (not started yet), to kill and start again."""
    private = daemons.PrivateLibvirtd(_workdir())
    yield private
    private.stop()
    shutil.rmtree(private.root.parent, ignore_errors=True)


@pytest.fixture
def libvirtd_in(libvirtd: str) -> Iterator[Callable[[str], daemons.PrivateLibvirtd]]:
    """Start a libvirtd of the test's own inside a host of the test bed (a network
    namespace): its guests' taps are made there, on that host's bridges."""
    started: list[daemons.PrivateLibvirtd] = []

    def start(netns: str) -> daemons.PrivateLibvirtd:
        private = daemons.PrivateLibvirtd(_workdir(), netns)
        started.append(private)
        private.start()
        return private

    yield start
    for private in started:
        private.stop()
        shutil.rmtree(private.root.parent, ignore_errors=True)


@pytest.fixture
def two_clusters() -> Iterator[tuple[str, str]]:
    """Two clusters whose private networks use the same addresses (seed Figure 2):
    the first's head node is the test's own namespace, with worker w1 (10.99.0.2); the
    second's is h2, with worker w3 (10.99.0.2 too). The head nodes share a LAN of their
    own (10.98.0.1, 10.98.0.2): their addresses there."""
    with (
        namespaces("w1", "h2", "w3", "g1", "g2", "g3"),
        underlay("w1"),
        underlay("w3", head="h2"),
        head_link("h2") as heads,
    ):
        for worker in ("w1", "w3"):  # to the CLC, on the head nodes' LAN
            run_in(worker, "ip", "route", "add", "10.98.0.0/24", "via", TEST_BED_HERE)
        yield heads
