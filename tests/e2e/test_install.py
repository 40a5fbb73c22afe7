"""The one-button install on a test bed of real systemd hosts (tests/support/testbed.py):
a cloud head, a cluster head and two workers reached only through it, installed over
SSH by install.yml, checked by the shipped testinfra checks, used with the aws CLI,
and taken away by uninstall.yml. The tests run in order, on one bed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import testbed
from tests.support.guest import wait_until
from tests.support.testbed import CLOUD_HEAD, CLUSTER_HEAD, HOSTS, REPO, WORKERS, recap

BOOT_MARKER = "MALLEE-BOOT-OK"


def playbook(inventory: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )


def states() -> dict[str, dict[str, list[str]]]:
    return {h.name: testbed.host_state(h) for h in HOSTS}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with testbed.test_bed(tmp_path_factory.mktemp("bed")) as inventory:
        yield inventory


@pytest.fixture(scope="module")
def before(bed: Path) -> dict[str, dict[str, list[str]]]:
    """Every host as the site had it, before mallee."""
    return states()


def _without_group(group: str) -> Callable[[dict[str, Any]], None]:
    def edit(inventory: dict[str, Any]) -> None:
        del inventory["all"]["children"][group]

    return edit


def _on_workers(**settings: Any) -> Callable[[dict[str, Any]], None]:
    def edit(inventory: dict[str, Any]) -> None:
        for w in WORKERS:
            inventory["all"]["hosts"][w.name].update(settings)

    return edit


@contextmanager
def _port_taken() -> Iterator[None]:
    WORKERS[0].run("systemd-run --unit=bed-squatter python3 -m http.server 8775")
    try:
        yield
    finally:
        WORKERS[0].run("systemctl stop bed-squatter")


@contextmanager
def _cluster_head_blocked() -> Iterator[None]:
    """A firewall on the first worker that drops what it sends to the CC's port."""
    WORKERS[0].run(
        "nft add table ip bed_block && nft add chain ip bed_block out"
        " '{ type filter hook output priority 0; }' &&"
        f" nft add rule ip bed_block out ip daddr {testbed.WORKERS_GATEWAY} tcp dport 8774 drop"
    )
    try:
        yield
    finally:
        WORKERS[0].run("nft delete table ip bed_block")


BAD_INVENTORIES: dict[str, tuple[Callable[[dict[str, Any]], None], Any, str]] = {
    "missing group": (_without_group("cc"), nullcontext, "no host of group cc heads its zone"),
    "unknown interface": (
        _on_workers(nc_public_bridge="br-site"),
        nullcontext,
        'nc_public_bridge "br-site" is not a bridge of this host',
    ),
    "port taken": (
        lambda inventory: None,
        _port_taken,
        "port 8775, which mallee-nc needs, is taken by another program",
    ),
    "no virtualization": (
        _on_workers(nc_allow_tcg=False),
        nullcontext,
        "has no usable hardware virtualization",
    ),
    "a hypervisor the host lacks": (
        _on_workers(nc_hypervisor="kvm"),
        nullcontext,
        "nc_hypervisor is kvm, but the host has no /dev/kvm",
    ),
    "worker cut off from its CC": (
        lambda inventory: None,
        _cluster_head_blocked,
        f"bed-w1 cannot reach its cluster head bed-head at {testbed.WORKERS_GATEWAY}:8774",
    ),
}


@pytest.mark.parametrize("case", BAD_INVENTORIES)
def test_bad_inventory_stops_in_prechecks_and_changes_nothing(bed, before, case):
    edit, situation, message = BAD_INVENTORIES[case]
    inventory = yaml.safe_load(bed.read_text())
    edit(inventory)
    bad = bed.with_name(f"bad-{case.replace(' ', '-')}.yml")
    bad.write_text(yaml.safe_dump(inventory))
    situation_now: AbstractContextManager[None] = situation()
    with situation_now:
        run = playbook(bad, "install.yml")
    assert run.returncode != 0
    said = " ".join(run.stdout.split())
    assert message in said, run.stdout[-3000:]
    assert all(c["changed"] == 0 for c in recap(run.stdout).values()), run.stdout[-3000:]
    assert states() == before


@pytest.fixture(scope="module")
def installed(bed, before) -> subprocess.CompletedProcess[str]:
    return playbook(bed, "install.yml")


def test_install_succeeds(installed):
    assert installed.returncode == 0, installed.stdout[-5000:] + installed.stderr[-2000:]
    assert set(recap(installed.stdout)) == {h.name for h in HOSTS}


# What README.md says the install changes besides the packages it adds (and what those
# packages made, which the install records for uninstall.yml): mallee's own files, and
# the files the packages' scripts rewrite.
MALLEE_PATHS = re.compile(
    r"/etc/mallee(/|$)|/etc/systemd/system/(multi-user\.target\.wants/)?mallee-\w+\.service"
    # the links by which the packages' scripts enable their units (and systemd's own
    # machines.target, which systemd-container's enables)
    r"|/etc/systemd/system/[^/]+\.wants(/|$)"
)
REWRITTEN = {
    *(f"/etc/{f}{b}" for f in ("passwd", "group", "shadow", "gshadow") for b in ("", "-")),
    "/etc/subuid", "/etc/subgid", "/etc/ld.so.cache",
    "/etc/libvirt/qemu.conf",  # cgroup_controllers, on a node that is a container
    # pam-auth-update's, as libpam-systemd (which libvirt's systemd support needs) comes
    "/etc/pam.d/common-session",
}  # fmt: skip
MALLEE_FOLDERS = {
    "/opt/mallee", "/var/lib/mallee", "/root/.aws", "/usr/local/bin/aws",
    *(f"/usr/local/bin/mallee-{c}" for c in ("nc", "cc", "clc", "ca", "admin")),
}  # fmt: skip


def test_install_changes_only_what_the_readme_lists(before, installed):
    for h in HOSTS:
        after = testbed.host_state(h)
        recorded = set(json.loads(h.run("cat /var/lib/mallee/install-state.json"))["added"])
        added_paths = {r.removeprefix("path:") for r in recorded if r.startswith("path:")}

        gained, lost = _changed(before[h.name], after, "packages")
        assert not lost, f"{h.name}: packages the site had were removed or changed: {lost}"
        assert {line.split()[1] for line in gained} <= recorded, f"{h.name}: unrecorded packages"
        packages = {r for r in recorded if not r.startswith(("path:", "user:", "group:"))}
        for what in ("etc", "etc contents"):
            gained, lost = _changed(before[h.name], after, what)
            paths = {_path(line, what) for line in gained | lost}
            unlisted = {
                p for p in paths
                if not (MALLEE_PATHS.match(p) or p in added_paths or p in REWRITTEN)
            }  # fmt: skip
            unlisted -= _of_packages(h, unlisted, packages)
            assert not unlisted, f"{h.name}: {what} changed outside README's list: {unlisted}"
        gained, lost = _changed(before[h.name], after, "folders")
        assert not lost, f"{h.name}: {lost} went away"
        unlisted = {f for f in gained if f not in MALLEE_FOLDERS and f not in added_paths}
        assert not unlisted, f"{h.name}: new in /opt, /var/lib, /usr/local/bin or /root: {unlisted}"
        gained, lost = _changed(before[h.name], after, "services")
        assert not lost, f"{h.name}: services that ran no longer do: {lost}"


def _changed(
    before: dict[str, list[str]], after: dict[str, list[str]], what: str
) -> tuple[set[str], set[str]]:
    """The lines of ``what`` that the host gained, and those it lost."""
    return set(after[what]) - set(before[what]), set(before[what]) - set(after[what])


def _of_packages(h: testbed.BedHost, paths: set[str], packages: set[str]) -> set[str]:
    """Those of ``paths`` that belong to one of ``packages``: their files, and the links
    their scripts made to their files (systemd's enablement links, alternatives)."""
    if not paths:
        return set()
    script = (  # dpkg knows a file by the path its package gave (/lib, not /usr/lib)
        'for p in "$@"; do o=$(dpkg-query -S "$p" 2>/dev/null'
        ' || dpkg-query -S "$(readlink "$p")" 2>/dev/null'
        ' || dpkg-query -S "$(readlink -f "$p")" 2>/dev/null);'
        ' echo "$p|${o%%:*}"; done'
    )
    quoted = " ".join(shlex.quote(p) for p in sorted(paths))
    owners = h.run(f"bash -c {shlex.quote(script)} _ {quoted}").splitlines()
    return {p for p, _, owner in (line.partition("|") for line in owners) if owner in packages}


def _path(line: str, what: str) -> str:
    """The path of a line of host_state's "etc" (path first) or "etc contents" (after
    the digest)."""
    return line.split()[0] if what == "etc" else line.split(maxsplit=1)[1]


def test_second_run_changes_nothing(bed, installed):
    again = playbook(bed, "install.yml")
    assert again.returncode == 0, again.stdout[-5000:]
    assert {h: c["changed"] for h, c in recap(again.stdout).items()} == dict.fromkeys(
        (h.name for h in HOSTS), 0
    ), again.stdout[-5000:]


def conformance_checks(inventory: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pytest", "-c", "tests/infra/pytest.ini", *(paths or ["tests/infra"]),
         "--hosts=ansible://all", f"--ansible-inventory={inventory}", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_conformance_checks_pass_on_every_host(bed, installed):
    checks = conformance_checks(bed)
    assert checks.returncode == 0, checks.stdout[-5000:]
    assert re.search(r"\b[1-9]\d* passed", checks.stdout), checks.stdout[-2000:]


def test_an_instance_runs_on_a_worker_through_the_aws_cli(bed, installed):
    """Run with the administrator's profile on the cloud head, it boots on a worker,
    takes its private address from the CC across the VDE wire and reads its metadata
    through the CC's proxy (the CLC is on another host)."""

    def ec2(command: str) -> Any:
        out = CLOUD_HEAD.run(f"aws --profile mallee --output json ec2 {command}")
        return json.loads(out) if out.strip() else None

    image = ec2(
        "describe-images --filters Name=name,Values=ttylinux Name=image-type,Values=machine"
    )["Images"][0]["ImageId"]
    instance = ec2(f"run-instances --image-id {image} --instance-type m1.small")["Instances"][0]
    instance_id = instance["InstanceId"]
    try:
        CLOUD_HEAD.run(
            f"aws --profile mallee ec2 wait instance-running --instance-ids {instance_id}"
        )
        listed = CLOUD_HEAD.run("mallee-admin instance list")
        node = next(line.split("\t")[4] for line in listed.splitlines() if instance_id in line)
        assert node in {w.name for w in WORKERS}

        console = ""

        def booted() -> bool:
            nonlocal console
            console = ec2(f"get-console-output --instance-id {instance_id}").get("Output", "")
            return BOOT_MARKER in console

        wait_until(booted, 300, f"{BOOT_MARKER} on {instance_id}'s console")
        assert f"metadata instance-id {instance_id}" in console, console[-2000:]
        assert "OPENSSL:" in CLUSTER_HEAD.run("ps -eo args | grep '^socat' || true")
        wires = conformance_checks(bed, "tests/infra/vde")
        assert wires.returncode == 0, wires.stdout[-5000:]
    finally:
        ec2(f"terminate-instances --instance-ids {instance_id}")
    CLOUD_HEAD.run(
        f"aws --profile mallee ec2 wait instance-terminated --instance-ids {instance_id}"
    )


def test_uninstall_leaves_every_host_as_it_was(bed, before, installed):
    removed = playbook(bed, "uninstall.yml")
    assert removed.returncode == 0, removed.stdout[-5000:]
    after: dict[str, dict[str, list[str]]] = {}

    def as_before() -> bool:
        # The hosts' login sessions of the run end (and systemd stops root's user
        # manager) a few seconds after its connections close.
        after.update(states())
        return after == before

    with contextlib.suppress(TimeoutError):
        wait_until(as_before, 60, "every host as it was")
    for h in HOSTS:
        for what in before[h.name]:
            gained, lost = _changed(before[h.name], after[h.name], what)
            assert (sorted(gained), sorted(lost)) == ([], []), f"{h.name}: {what} differ"
