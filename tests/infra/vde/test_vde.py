"""The VDE overlay's hosts: vde2 and socat installed, each daemon's switch running in
the daemon's own unit and answering on its management socket, each node waiting for
its CC's wire or connected to it (test_cc_wires.py checks the CC's side). Each mallee
daemon runs its host's switch and wires (docs/architecture.md), so systemd stops and
restarts them with it."""

import re

from tests.infra.conftest import services, units_of

testinfra_hosts = ["ansible://vde"]


def test_vde2_and_socat_are_installed(host):
    for package in ("vde2", "socat"):
        assert host.package(package).is_installed, f"{package} is not installed"


def test_each_daemons_switch_runs_in_its_unit_and_answers(host, inventory):
    # each process's systemd unit ("-" for none) and command line
    processes = [
        line.split(None, 1) for line in host.check_output("ps -eo unit=,args=").splitlines()
    ]
    for role in ("nc", "cc"):
        if role not in inventory["group_names"]:
            continue
        for unit in units_of(role, host):
            switches = [
                m[1]
                for owner, args in processes
                if owner == unit and (m := re.match(r"vde_switch .*--mgmt (\S+)", args))
            ]
            assert len(switches) == 1, f"{unit} runs {len(switches)} VDE switches, not one"
            info = host.check_output(
                f"printf 'showinfo\\n' | timeout 5 socat - UNIX-CONNECT:{switches[0]}"
            )
            assert "VDE switch" in info, f"{unit}'s switch at {switches[0]} does not answer"


def test_node_waits_for_its_wire_or_has_it(host):
    """The node's wire port listens until its CC's wire connects (one wire a node)."""
    for name, service in services("vde", host).items():
        for port in service["ports"]:
            sockets = host.check_output(f"ss -Htan 'sport = :{port}'").split()
            assert {"LISTEN", "ESTAB"} & set(sockets), f"{name}: no wire and none awaited on {port}"
