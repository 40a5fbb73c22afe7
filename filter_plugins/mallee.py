"""Filters the roles share: the services one host runs, and a section of mallee.conf.

Kept in Python, as kolla-ansible keeps its service filters, so the services dicts'
schema is enforced in one place and unit-tested (tests/unit/test_ansible_filters.py).
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

SERVICE_KEYS = ("group", "unit", "enabled", "ports")


def services_on_host(
    services: Mapping[str, Mapping[str, Any]], group_names: Sequence[str]
) -> dict[str, Any]:
    """The enabled entries of a ``<role>_services`` dict whose group this host is in."""
    chosen = {}
    for name, service in services.items():
        missing = [key for key in SERVICE_KEYS if key not in service]
        if missing:
            raise ValueError(f"service {name!r} lacks {', '.join(missing)}")
        if service["enabled"] and service["group"] in group_names:
            chosen[name] = dict(service)
    return chosen


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


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"services_on_host": services_on_host, "toml_section": toml_section}
