"""The README's first command, tools/cloud-in-a-box, as a new user runs it: from no box
to an instance running, then again (quick, changing nothing), then stopped, leaving
nothing behind. It makes its systemd-nspawn host even where systemd runs this machine
(--in-nspawn), so that the test never installs into the machine running it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mallee.common import host
from tests.support.testbed import REPO, recap


def cloud_in_a_box(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "tools" / "cloud-in-a-box"), "--in-nspawn", *args],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first() -> Iterator[subprocess.CompletedProcess[str]]:
    try:
        yield cloud_in_a_box()
    finally:
        cloud_in_a_box("stop")


def test_first_run_shows_each_phase_and_ends_with_an_instance_running(first):
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    phases = re.findall(r"^== \d\d:\d\d:\d\d cloud-in-a-box: (.*)$", first.stdout, re.M)
    assert [p.split(" ")[0] for p in phases] == ["preparing", "no", "installing", "running", "the"]
    assert re.search(r"\|\s+State\s+\|\s+running\s+\|", first.stdout), first.stdout[-3000:]


def test_second_run_changes_nothing_and_finds_the_instance(first):
    again = cloud_in_a_box()
    assert again.returncode == 0, again.stdout[-5000:]
    assert [c["changed"] for c in recap(again.stdout).values()] == [0], again.stdout[-5000:]
    assert "an instance runs already" in again.stdout


def test_stop_leaves_nothing_behind(first):
    stopped = cloud_in_a_box("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "mlbox0" not in host.run("ip", "-br", "link")
    assert "mallee_box" not in host.run("nft", "list", "tables")
    assert not list(Path("/var/lib/mallee-nspawn").glob("mallee-box*"))
