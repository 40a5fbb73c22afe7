"""The VDE overlay's hosts: vde2 and socat installed, the host's switch answering on
its management socket, each node waiting for its CC's wire or connected to it. Each
mallee daemon runs its host's switch and wires (docs/architecture.md)."""

from tests.infra.conftest import services

testinfra_hosts = ["ansible://vde"]

# Where each daemon keeps its switch: [nc] instance_dir/.vde, [cc] state_dir/vde.
SWITCHES = {
    "nc": "/var/lib/mallee/nc/instances/.vde/mgmt",
    "cc": "/var/lib/mallee/cc/vde/mgmt",
}


def test_vde2_and_socat_are_installed(host):
    for package in ("vde2", "socat"):
        assert host.package(package).is_installed, f"{package} is not installed"


def test_each_daemons_switch_answers(host, inventory):
    for group, socket in SWITCHES.items():
        if group not in inventory["group_names"]:
            continue
        info = host.check_output(f"printf 'showinfo\\n' | timeout 5 socat - UNIX-CONNECT:{socket}")
        assert "VDE switch" in info, f"the {group}'s switch at {socket} does not answer"


def test_node_waits_for_its_wire_or_has_it(host):
    """The node's wire port listens until its CC's wire connects (one wire a node)."""
    for name, service in services("vde", host).items():
        for port in service["ports"]:
            sockets = host.check_output(f"ss -Htan 'sport = :{port}'").split()
            assert {"LISTEN", "ESTAB"} & set(sockets), f"{name}: no wire and none awaited on {port}"
