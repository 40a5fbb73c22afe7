"""Filters the roles share: the services and units one host runs, a section of
mallee.conf, and what a package install added.

Kept in Python, as kolla-ansible keeps its service filters, so the services dicts'
schema is enforced in one place and unit-tested (tests/unit/test_ansible_filters.py).
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SERVICE_KEYS = ("group", "unit", "enabled", "ports")


def services_on_host(
    services: Mapping[str, Mapping[str, Any]],
    group_names: Sequence[str],
    enabled_only: bool = True,
) -> dict[str, Any]:
    """The entries of a ``<role>_services`` dict whose group this host is in: the
    enabled ones, or all (``enabled_only=False``: what uninstall removes)."""
    chosen = {}
    for name, service in services.items():
        missing = [key for key in SERVICE_KEYS if key not in service]
        if missing:
            raise ValueError(f"service {name!r} lacks {', '.join(missing)}")
        if (service["enabled"] or not enabled_only) and service["group"] in group_names:
            chosen[name] = dict(service)
    return chosen


def units_on_host(
    services: Mapping[str, Mapping[str, Any]],
    group_names: Sequence[str],
    enabled_only: bool = True,
) -> list[str]:
    """The systemd units of the host's services (as ``services_on_host`` chooses
    them), each once, in the dict's order."""
    chosen = services_on_host(services, group_names, enabled_only)
    return list(dict.fromkeys(service["unit"] for service in chosen.values()))


def toml_section(settings: Mapping[str, Any], name: str) -> str:
    """``[name]`` and one ``key = value`` line per setting, in the order given.

    mallee.conf holds strings, numbers, booleans and lists of strings only; JSON's
    spelling of those is TOML's too.
    """
    lines = [f"[{name}]"]
    for key, value in settings.items():
        if isinstance(value, Mapping) or value is None:
            raise ValueError(f"[{name}] {key}: {value!r} is not a string, number, boolean or list")
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines)


def added_by_install(added: Iterable[str]) -> list[str]:
    """Of the lines host-inventory.sh gained across a package install, those the
    install can be held to: every package, user and group, but only the paths inside
    a folder of /etc or /var/lib that is new itself (``path:/etc/libvirt/...`` when
    ``path:/etc/libvirt`` is new), so that a file another program wrote meanwhile in a
    folder the host had is never taken for the install's, nor removed by uninstall."""
    lines = set(added)
    kept = []
    for line in sorted(lines):
        if line.startswith("path:"):
            depth = 4 if line.startswith("path:/var/lib/") else 3
            top = "/".join(line.removeprefix("path:").split("/")[:depth])
            if f"path:{top}" not in lines:
                continue
        kept.append(line)
    return kept


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "services_on_host": services_on_host,
            "units_on_host": units_on_host,
            "toml_section": toml_section,
            "added_by_install": added_by_install,
        }
