"""What the roles decide and write, run by Ansible on the controller alone, for what no
test bed here can be: inventory/example-two-clusters.yml (the seed's Figure 2: two
clusters whose workers share 10.1.0.0/24) and a Xen host. Every host's mallee.conf is
rendered from the real roles' defaults (at their own precedence, under the inventory's
settings) and templates, then read by the daemons' own config loader; the nc role's
choice of hypervisor is run against the facts Ansible reports on each kind of host.
The test bed installs one cluster for real (tests/e2e/test_install.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mallee.cc.config import CcConfig
from mallee.clc.config import ClcConfig
from mallee.common import config
from mallee.nc.config import NcConfig
from mallee.nc.hypervisor import choose_virt_type

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example-two-clusters.yml"
ROLES = ("common", "clc", "cc", "nc")
DAEMONS = {"clc": ClcConfig, "cc": CcConfig, "nc": NcConfig}


def playbook(tmp_path: Path, inventory: Path, play: str, *extra: str) -> None:
    """Run ``play`` (a playbook's text) from the checkout, as install.yml is run."""
    path = tmp_path / "play.yml"
    path.write_text(play)
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(path), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},  # the controller's ~/.mallee
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def render(
    tmp_path: Path, inventory: Path = EXAMPLE, hypervisor_found: str = "kvm"
) -> dict[str, dict[str, Any]]:
    """Each host's mallee.conf as the roles' config tasks write it (a block per role of
    the host's groups; as text and parsed) and its node packages. A role of the test's
    own holds the four roles' defaults, so that they rank as role defaults do, below
    the inventory. ``nc_hypervisor_found`` is what tasks/hypervisor.yml finds on a
    host; here it is given."""
    role = tmp_path / "roles" / "rendered"
    (role / "defaults" / "main").mkdir(parents=True)
    (role / "tasks").mkdir()
    for name in ROLES:
        (role / "defaults" / "main" / f"{name}.yml").symlink_to(
            REPO / "roles" / name / "defaults" / "main.yml"
        )
    template = str(REPO / "roles" / "{name}" / "templates" / "mallee.conf-{name}.j2")
    blocks = " + '\\n' + ".join(
        f"(lookup('ansible.builtin.template', '{template.format(name=name)}')"
        f" if '{name}' in group_names or '{name}' == 'common' else '')"
        for name in ROLES
    )
    out = tmp_path / "hosts"
    out.mkdir()
    (role / "tasks" / "main.yml").write_text(f"""
- name: Write each host's file and packages on the controller
  ansible.builtin.copy:
    dest: "{out}/{{{{ inventory_hostname }}}}.json"
    content: "{{{{ {{'text': {blocks}, 'packages': packages}} | to_json }}}}"
    mode: "0600"
  vars:
    packages: "{{{{ nc_packages if 'nc' in group_names else [] }}}}"
  delegate_to: localhost
""")  # fmt: skip
    play = f"""
- name: Render what install.yml would write, reaching no host
  hosts: all
  gather_facts: false
  roles: [{role}]
"""
    playbook(tmp_path, inventory, play, "-e", f"nc_hypervisor_found={hypervisor_found}")
    site = {}
    for path in out.glob("*.json"):
        rendered = json.loads(path.read_text())
        site[path.stem] = {**rendered, "conf": tomllib.loads(rendered["text"])}
    return site


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


def test_the_inventorys_settings_win_over_the_roles_defaults(tmp_path):
    inventory = yaml.safe_load(EXAMPLE.read_text())
    workers_a = inventory["all"]["children"]["nc"]["children"]["workers_a"]
    workers_a["vars"]["nc_public_bridge"] = "br-lan"
    workers_a["hosts"]["a1.example.org"]["nc_config_overrides"] = {"swap_mb": 0}
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
    site_file = tmp_path / "inventory" / "site.yml"
    site_file.write_text(yaml.safe_dump(inventory))

    nodes = {
        h: r["conf"]["nc"] for h, r in render(tmp_path, site_file).items() if "nc" in r["conf"]
    }
    assert nodes["a1.example.org"]["public_bridge"] == "br-lan"
    assert nodes["a1.example.org"]["swap_mb"] == 0
    assert "swap_mb" not in nodes["a2.example.org"]
    assert nodes["b1.example.org"]["public_bridge"] == "user"


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


# What Ansible's facts say of each kind of host (ansible-core's linux virtual facts:
# dom0 is "xen"/"host" only where /proc/xen/capabilities says control_d).
HOSTS_SEEN_AS = {
    "xen-dom0": ("xen", "host"),
    "xen-domU": ("xen", "guest"),
    "nspawn-container": ("systemd-nspawn", "guest"),
    "kvm-guest": ("kvm", "guest"),
    "bare-metal": ("", ""),
}


def test_the_node_takes_xen_on_dom0_only_and_kvm_on_bare_metal_only(tmp_path):
    """tasks/hypervisor.yml on this machine, with each kind of host's facts."""
    hosts = {
        name: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
               "ansible_virtualization_type": kind, "ansible_virtualization_role": role}
        for name, (kind, role) in HOSTS_SEEN_AS.items()
    }  # fmt: skip
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    play = f"""
- name: Find each host's hypervisor
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the nc role's decision
      ansible.builtin.include_role:
        name: nc
        tasks_from: hypervisor
    - name: Write it down
      ansible.builtin.copy:
        dest: "{tmp_path}/{{{{ inventory_hostname }}}}"
        content: "{{{{ nc_hypervisor_found }}}}"
        mode: "0600"
"""
    playbook(tmp_path, inventory, play)
    found = {name: (tmp_path / name).read_text() for name in HOSTS_SEEN_AS}
    on_bare_metal = found.pop("bare-metal")
    assert found == {
        "xen-dom0": "xen",
        "xen-domU": "qemu",
        "nspawn-container": "qemu",
        "kvm-guest": "qemu",  # nested KVM may hang guests at boot: TCG, unless asked
    }
    if not Path("/dev/kvm").exists():
        pytest.skip("this machine has no /dev/kvm, so bare metal's KVM cannot be seen")
    assert on_bare_metal == "kvm"
