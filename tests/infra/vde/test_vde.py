"""The VDE overlay's hosts: vde2 and socat installed, each daemon's switch running in
the daemon's own unit and answering on its management socket, each node waiting for
its CC's wire or connected to it. Each mallee daemon runs its host's switch and wires
(docs/architecture.md), so systemd stops and restarts them with it."""

import re

from tests.infra.conftest import services, units_of

testinfra_hosts = ["ansible://vde"]


def processes(host) -> list[list[str]]:
    """Each process's systemd unit ("-" for none) and command line."""
    return [line.split(None, 1) for line in host.check_output("ps -eo unit=,args=").splitlines()]


def test_vde2_and_socat_are_installed(host):
    for package in ("vde2", "socat"):
        assert host.package(package).is_installed, f"{package} is not installed"


def test_each_daemons_switch_runs_in_its_unit_and_answers(host, inventory):
    for role in ("nc", "cc"):
        if role not in inventory["group_names"]:
            continue
        for unit in units_of(role, host):
            switches = [
                m[1]
                for owner, args in processes(host)
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


def test_each_wire_its_cc_dialled_is_connected(host):
    """A wire is dialled by the CC to each node whose VLANs are in use (none while no
    instance runs), and stays connected while they are."""
    for unit in units_of("cc", host):
        for owner, args in processes(host):
            wire = re.match(r"socat .*\b(?:OPENSSL|TCP):([\d.]+):(\d+),", args)
            if owner != unit or not wire:
                continue
            peer, port = wire.groups()
            connected = host.check_output(
                f"ss -Htn state established '( dport = :{port} and dst {peer} )'"
            )
            assert connected.strip(), f"{unit}'s wire to {peer}:{port} is not connected"
