"""The roles' filters (filter_plugins/mallee.py): which services and units a host runs,
how a section of mallee.conf is written, and what a package install is held to."""

import importlib.util
import tomllib
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "mallee_filters", Path(__file__).resolve().parents[2] / "filter_plugins" / "mallee.py"
)
assert _spec and _spec.loader
filters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(filters)

SERVICES = {
    "mallee-nc": {"group": "nc", "unit": "mallee-nc.service", "enabled": True, "ports": [8775]},
    "vde-wire": {"group": "nc", "unit": "mallee-nc.service", "enabled": False, "ports": [8776]},
    "mallee-cc": {"group": "cc", "unit": "mallee-cc.service", "enabled": True, "ports": [8774]},
}


def test_a_host_runs_the_enabled_services_of_its_groups():
    assert list(filters.services_on_host(SERVICES, ["nc", "vde"])) == ["mallee-nc"]
    assert list(filters.services_on_host(SERVICES, ["cc", "nc"])) == ["mallee-nc", "mallee-cc"]
    assert filters.services_on_host(SERVICES, ["clc"]) == {}


def test_services_sharing_a_unit_start_it_once():
    shared = {
        **SERVICES,
        "metadata": {"group": "cc", "unit": "mallee-cc.service", "enabled": True, "ports": [80]},
    }
    assert filters.units_on_host(shared, ["cc", "nc"]) == ["mallee-nc.service", "mallee-cc.service"]


def test_uninstall_removes_the_units_of_services_turned_off_since():
    assert filters.units_on_host(SERVICES, ["nc"]) == ["mallee-nc.service"]
    off = {**SERVICES, "mallee-nc": {**SERVICES["mallee-nc"], "enabled": False}}
    assert filters.units_on_host(off, ["nc"]) == []
    assert filters.units_on_host(off, ["nc"], enabled_only=False) == ["mallee-nc.service"]


def test_a_service_without_its_group_or_ports_is_refused_by_name():
    broken = {"mallee-nc": {"unit": "mallee-nc.service", "enabled": True}}
    with pytest.raises(ValueError, match="'mallee-nc' lacks group, ports"):
        filters.services_on_host(broken, ["nc"])


def test_the_install_is_held_to_paths_in_folders_it_made_and_nothing_else():
    gained = [
        "libvirt-daemon",
        "user:libvirt-qemu",
        "group:kvm",
        "path:/etc/libvirt",
        "path:/etc/libvirt/qemu.conf",
        "path:/var/lib/libvirt",
        "path:/var/lib/libvirt/qemu",
        # written meanwhile by other programs, in folders the host had
        "path:/etc/cron.d/backup",
        "path:/var/lib/postgresql/15/main/base/1/1259",
    ]
    assert filters.added_by_install(gained) == sorted(gained[:7])


def test_a_section_reads_back_as_the_settings_given():
    settings = {
        "listen": "0.0.0.0",
        "port": 8775,
        "poll_interval_s": 5.0,
        "tls": True,
        "overlay_peers": ["192.0.2.21", "192.0.2.22"],
        "metadata_proxy_secret": 'quo"te\\back',
        "kernel_cmdline": "console=ttyS0 root=/dev/vda é",
    }
    written = filters.toml_section(settings, "nc")
    assert tomllib.loads(written) == {"nc": settings}


def test_a_nested_or_missing_value_is_refused_by_key():
    with pytest.raises(ValueError, match=r"\[cc\] peers: \{"):
        filters.toml_section({"peers": {"a": 1}}, "cc")
    with pytest.raises(ValueError, match=r"\[cc\] url: None"):
        filters.toml_section({"url": None}, "cc")
