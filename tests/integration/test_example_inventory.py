"""What install.yml would write on the hosts of inventory/example-two-clusters.yml (the
seed's Figure 2: two clusters whose workers share 10.1.0.0/24), rendered by Ansible
from the real roles' defaults and templates without reaching any host, then read by
the daemons' own config loader: every daemon would accept its section, and the
clusters would be joined through their heads. The test bed installs one cluster for
real (tests/e2e/test_install.py); this covers the second, and the Xen path, which no
machine here runs."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mallee.cc.config import CcConfig
from mallee.clc.config import ClcConfig
from mallee.common import config
from mallee.nc.config import NcConfig
from mallee.nc.hypervisor import choose_virt_type

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory" / "example-two-clusters.yml"
ROLES = ("common", "clc", "cc", "nc")
DAEMONS = {"clc": ClcConfig, "cc": CcConfig, "nc": NcConfig}


def render(tmp_path: Path, hypervisor_found: str = "kvm") -> dict[str, dict[str, Any]]:
    """Each host's rendered mallee.conf (as text and parsed) and its packages."""
    playbook, out = tmp_path / "render.yml", tmp_path / "hosts"
    playbook.write_text(_playbook())
    out.mkdir()
    run = subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), str(playbook),
         "-e", f"nc_hypervisor_found={hypervisor_found} rendered_into={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    site = {}
    for path in out.glob("*.json"):
        rendered = json.loads(path.read_text())
        site[path.stem] = {**rendered, "conf": tomllib.loads(rendered["text"])}
    return site


def _playbook() -> str:
    """Every host's mallee.conf as the roles' config tasks write it (a block per role of
    the host's groups), and a node's packages, written on the controller. The host is
    never reached: ``nc_hypervisor_found``, which the nc role's prechecks find on a
    host, is given."""
    template = f"{REPO}/roles/{{role}}/templates/mallee.conf-{{role}}.j2"
    blocks = " + '\\n' + ".join(
        f"(lookup('ansible.builtin.template', '{template.format(role=role)}')"
        f" if '{role}' in group_names or '{role}' == 'common' else '')"
        for role in ROLES
    )
    defaults = [str(REPO / "roles" / role / "defaults" / "main.yml") for role in ROLES]
    return f"""
- name: Render mallee.conf as the roles would, reaching no host
  hosts: all
  gather_facts: false
  vars_files: {json.dumps(defaults)}
  tasks:
    - name: Write each host's file and packages on the controller
      ansible.builtin.copy:
        dest: "{{{{ rendered_into }}}}/{{{{ inventory_hostname }}}}.json"
        content: "{{{{ {{'text': {blocks}, 'packages': packages}} | to_json }}}}"
        mode: "0600"
      vars:
        packages: "{{{{ nc_packages if 'nc' in group_names else [] }}}}"
      delegate_to: localhost
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return render(tmp_path_factory.mktemp("example"))


def loaded(tmp_path: Path, text: str, daemon: type[config.DaemonConfig]) -> Any:
    """The daemon's section as the daemon itself reads it at start."""
    path = tmp_path / "mallee.conf"
    path.write_text(text)
    os.environ[config.PATH_ENV] = str(path)
    try:
        return config.load(daemon)[1]
    finally:
        del os.environ[config.PATH_ENV]


def test_every_daemon_accepts_the_section_the_install_writes(site, tmp_path):
    assert len(site) == 7, sorted(site)  # the cloud head, two cluster heads, four workers
    for host, rendered in site.items():
        for section, daemon in DAEMONS.items():
            if section in rendered["conf"]:
                loaded(tmp_path, rendered["text"], daemon)
        assert "common" in rendered["conf"], host


def test_each_cluster_head_joins_the_other_through_the_site_network(site):
    a, b = site["head-a.example.org"]["conf"]["cc"], site["head-b.example.org"]["conf"]["cc"]
    assert (a["overlay_peers"], a["overlay_peer_address"]) == (["192.0.2.22"], "192.0.2.21")
    assert (b["overlay_peers"], b["overlay_peer_address"]) == (["192.0.2.21"], "192.0.2.22")
    # Each head meets its own workers at the address they share with the other cluster.
    assert a["overlay_address"] == b["overlay_address"] == "10.1.0.1"
    assert a["metadata_address"] == b["metadata_address"] == "192.0.2.10:8779"


def test_workers_of_both_clusters_keep_the_same_private_addresses(site):
    nodes = {h: r["conf"]["nc"] for h, r in site.items() if "nc" in r["conf"]}
    assert set(nodes) == {"a1.example.org", "a2.example.org", "b1.example.org", "b2.example.org"}
    assert nodes["a1.example.org"]["overlay_address"] == "10.1.0.11"
    assert nodes["b1.example.org"]["overlay_address"] == "10.1.0.11"
    assert {n["node_name"] for n in nodes.values()} == set(nodes)


def test_a_node_on_a_xen_host_gets_libvirts_xen_driver_and_runs_xen_domains(tmp_path):
    xen = render(tmp_path, hypervisor_found="xen")["a1.example.org"]
    node = loaded(tmp_path, xen["text"], NcConfig)
    assert choose_virt_type(node.hypervisor, node.libvirt_uri) == "xen"
    assert "libvirt-daemon-driver-xen" in xen["packages"]
    assert "qemu-system-x86" not in xen["packages"]


def test_a_node_with_kvm_gets_qemu_and_runs_kvm_or_tcg_domains(site, tmp_path):
    kvm = site["a1.example.org"]
    node = loaded(tmp_path, kvm["text"], NcConfig)
    assert node.libvirt_uri == "qemu:///system"
    assert "qemu-system-x86" in kvm["packages"]
    assert "libvirt-daemon-driver-xen" not in kvm["packages"]
