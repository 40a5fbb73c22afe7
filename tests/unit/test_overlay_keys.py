"""The overlay keys a daemon is started with: what cannot work on this host stops it,
in a sentence naming the key and what to do instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mallee.common.overlay import overlay_problem


@pytest.mark.parametrize(
    ("overlay", "address", "message"),
    [
        ("vlan", "127.0.0.1", r"'vlan' is not one of \"vxlan\" .*, \"vde\" .* or \"\" \(none\)"),
        ("vxlan", "", r"\[nc\] overlay = vxlan needs overlay_address"),
        ("vde", "", r"\[nc\] overlay = vde needs overlay_address"),
        ("vxlan", "192.0.2.77", r"overlay_address: 192.0.2.77 is not an address of this host"),
    ],
)
def test_overlay_keys_that_cannot_work_are_named(overlay: str, address: str, message: str) -> None:
    problem = overlay_problem("nc", overlay, address)
    assert re.search(message, problem), problem


def test_vde_without_its_programs_names_them_and_the_mode_to_use_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "socat").write_text("#!/bin/sh\n")
    (tmp_path / "socat").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # a host with socat but no vde2
    problem = overlay_problem("cc", "vde", "127.0.0.1")
    assert problem.startswith('[cc] overlay = "vde" needs vde_switch, vde_plug, dpipe (')
    assert 'use overlay = "vxlan"' in problem


def test_keys_that_work_raise_nothing() -> None:
    assert overlay_problem("nc", "", "") == ""
    assert overlay_problem("nc", "vxlan", "127.0.0.1") == ""
    assert overlay_problem("nc", "vde", "127.0.0.1") == ""
