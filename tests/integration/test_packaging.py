"""mallee's RPMs (packaging/rpm/mallee.spec, built by tools/build-rpms): they build,
rpmlint finds no error, each daemon's package installs the very unit file the roles
install with systemd's scriptlets, and the packaged commands run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"python3-mallee", "mallee-nc", "mallee-cc", "mallee-clc", "mallee-ansible"}


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rpms")
    subprocess.run([REPO / "tools" / "build-rpms", out], check=True, capture_output=True)
    built = sorted((out / "RPMS" / "noarch").glob("*.rpm"))
    return {"rpmlint": out / "rpmlint.txt"} | {
        p.name.removesuffix("-0.1.0-1.noarch.rpm"): p for p in built
    }


def unpacked(rpm: Path, into: Path) -> Path:
    into.mkdir(exist_ok=True)
    payload = subprocess.run(["rpm2cpio", rpm], check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=into, check=True)
    return into


def test_every_package_builds_and_rpmlint_finds_no_error(rpms):
    assert set(rpms) - {"rpmlint"} == PACKAGES
    verdict = rpms["rpmlint"].read_text().splitlines()[-1]
    assert " 0 errors" in verdict, rpms["rpmlint"].read_text()


@pytest.mark.parametrize("daemon", ["nc", "cc", "clc"])
def test_daemon_package_installs_the_roles_unit_with_systemds_scriptlets(rpms, daemon, tmp_path):
    unit = f"mallee-{daemon}.service"
    tree = unpacked(rpms[f"mallee-{daemon}"], tmp_path)
    packaged = tree / "usr" / "lib" / "systemd" / "system" / unit
    assert packaged.read_bytes() == (REPO / "packaging" / "systemd" / unit).read_bytes()
    scripts = subprocess.run(
        ["rpm", "-qp", "--scripts", rpms[f"mallee-{daemon}"]],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for action in ("preset", "disable --now", "try-restart"):
        assert f"{action} {unit}" in scripts, scripts


def test_packaged_commands_run_from_the_packaged_module(rpms, tmp_path):
    tree = tmp_path / "root"
    for package in ("python3-mallee", "mallee-nc"):
        unpacked(rpms[package], tree)
    sitelib = next(tree.glob("usr/lib/python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(sitelib)}
    where = subprocess.run(
        [sys.executable, "-c", "import mallee.nc.app, mallee; print(mallee.__file__)"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(sitelib))
    usage = subprocess.run(
        [sys.executable, tree / "usr" / "bin" / "mallee-nc", "--help"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert usage.returncode == 0 and "usage: mallee-nc" in usage.stdout, usage.stderr


def test_ansible_package_holds_the_installer_and_its_checks(rpms, tmp_path):
    tree = unpacked(rpms["mallee-ansible"], tmp_path) / "usr" / "share" / "mallee" / "ansible"
    for path in ("install.yml", "uninstall.yml", "roles/nc/tasks/main.yml",
                 "inventory/group_vars/all/mallee.yml", "tests/infra/nc/test_nc.py"):  # fmt: skip
        assert (tree / path).is_file(), path
    for unit in ("mallee-nc.service", "mallee-cc.service", "mallee-clc.service"):
        packaged = (tree / "packaging" / "systemd" / unit).read_bytes()
        assert packaged == (REPO / "packaging" / "systemd" / unit).read_bytes()
