"""What the conformance checks of an installed cloud share (run them with
``pytest -c tests/infra/pytest.ini --hosts=ansible://all --ansible-inventory=INVENTORY``
from the checkout; see tests/infra/README.md).

Expectations come from the roles' ``<role>_services`` dicts (units, ports), read from
the roles' defaults, and from the inventory's variables: testinfra sees those, but not
role defaults, so a ``{{ var }}`` in a dict is resolved through the inventory.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from filter_plugins.mallee import services_on_host, units_on_host

ROLES = Path(__file__).resolve().parents[2] / "roles"
EXPIRY_MARGIN = datetime.timedelta(days=30)


def services(role: str, host: Any) -> dict[str, dict[str, Any]]:
    """``<role>_services`` of roles/<role>/defaults/main.yml, for ``host``: enabled
    entries of the host's groups (chosen as the roles choose them), ports as numbers."""
    return services_on_host(*_resolved_services(role, host))


def units_of(role: str, host: Any) -> list[str]:
    """The units of the host's ``<role>_services``, each once."""
    return units_on_host(*_resolved_services(role, host))


def _resolved_services(role: str, host: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The role's services dict with its ``{{ var }}`` values taken from the inventory,
    and the host's groups."""
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    variables = host.ansible.get_variables()
    resolved = {
        name: {
            **service,
            "enabled": _resolve(service["enabled"], variables) in (True, "True", "true"),
            "ports": [int(_resolve(port, variables)) for port in service["ports"]],
        }
        for name, service in defaults[f"{role}_services"].items()
    }
    return resolved, variables["group_names"]


def _resolve(value: Any, variables: dict[str, Any]) -> Any:
    """``{{ name }}`` from the inventory, and the one comparison the dicts use
    (``{{ name == 'word' }}``); anything else is taken literally."""
    if not isinstance(value, str):
        return value
    if m := re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value):
        return variables[m[1]]
    if m := re.fullmatch(r"\{\{\s*(\w+)\s*==\s*'([^']*)'\s*\}\}", value):
        return variables[m[1]] == m[2]
    return value


def check_units_running(host: Any, units: list[str]) -> None:
    """Each of ``units`` is enabled and running."""
    for name in units:
        unit = host.service(name)
        assert unit.is_enabled, f"{name} is not enabled"
        assert unit.is_running, f"{name} is not running"


def check_ports_listen(host: Any, role: str) -> None:
    """Every port of the host's ``<role>_services`` listens on every interface."""
    for name, service in services(role, host).items():
        for port in service["ports"]:
            assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, f"{name}: nothing on {port}"


def check_config_file(host: Any, section: str) -> None:
    """mallee.conf is root's alone (it may hold secrets) and has ``[section]``."""
    config = host.file(variables(host)["mallee_config_file"])
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert f"[{section}]" in config.content_string


def check_certificate(host: Any, path: str, role: str) -> None:
    """The certificate at ``path`` is the cloud CA's, for ``role``, and valid for at
    least 30 more days."""
    cert_file = host.file(path)
    assert cert_file.exists, f"{path} is missing"
    cert = x509.load_pem_x509_certificate(cert_file.content)
    ca = x509.load_pem_x509_certificate(
        host.file(variables(host)["mallee_tls_dir"] + "/ca.pem").content
    )
    assert cert.issuer == ca.subject, f"{path} is not signed by the cloud's CA"
    units = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [u.value for u in units] == [role], f"{path} is not a {role} certificate"
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now, f"{path} is not valid yet"
    assert cert.not_valid_after_utc - now > EXPIRY_MARGIN, (
        f"{path} expires on {cert.not_valid_after_utc:%Y-%m-%d}, within 30 days"
    )


def variables(host: Any, name: str | None = None) -> dict[str, Any]:
    """The inventory variables of ``host``, or of the inventory's host ``name``."""
    runner = host.backend.ansible_runner
    return runner.get_variables(name or host.backend.host)


def other_host(host: Any, name: str) -> Any:
    """The inventory's host ``name``, to run commands on (the CLC, a zone's CC)."""
    return host.backend.ansible_runner.get_host(name)


def clc_host(host: Any) -> Any:
    return other_host(host, variables(host)["groups"]["clc"][0])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--hosts`` (which testinfra lets override each module's own list), keep a
    module's tests only for the hosts of the groups its ``testinfra_hosts`` names."""
    kept, deselected = [], []
    for item in items:
        wanted = getattr(item.module, "testinfra_hosts", None)  # type: ignore[attr-defined]
        params = getattr(item, "callspec", None)
        host = params.params.get("_testinfra_host") if params else None
        if wanted is None or host is None or _in_groups(host, wanted):
            kept.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _in_groups(host: Any, patterns: list[str]) -> bool:
    groups = variables(host)["group_names"]
    return any(p.removeprefix("ansible://") in (*groups, "all") for p in patterns)


@pytest.fixture
def inventory(host: Any) -> dict[str, Any]:
    """The host's inventory variables (group_vars/all/mallee.yml and the site's)."""
    return variables(host)
