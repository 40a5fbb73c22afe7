"""The end-to-end test bed: hosts with a systemd of their own (systemd-nspawn, made by
tools/nspawn-host) on bridges of the test's, laid out as a site of the seed's: a cloud
head and a cluster head on the site's network, and workers on a private network that
only the cluster head reaches (it routes them out, as cluster heads do). The controller
(this machine) reaches the workers through the cluster head, by SSH."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mallee.common import host
from mallee.common.errors import HostCommandFailed

REPO = Path(__file__).resolve().parents[2]
NSPAWN_HOST = str(REPO / "tools" / "nspawn-host")
SITE_BRIDGE, WORKER_BRIDGE = "mlbedsite", "mlbedwork"
CONTROLLER = "10.97.0.254"  # this machine, on the site's network
NAT_TABLE = "mallee_testbed"
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


@dataclass(frozen=True)
class BedHost:
    name: str
    address: str  # where the other hosts reach it (site's or workers' network)
    groups: tuple[str, ...]
    jump: str = ""  # the host the controller reaches it through

    def run(self, command: str, timeout_s: float = 300) -> str:
        """``command`` (a shell line) on this host, in a login shell of root with the
        host's own environment (none of this machine's), through its systemd's
        namespaces; its output, or HostCommandFailed."""
        pid = host.run(NSPAWN_HOST, "pid", self.name).strip()
        return host.run(
            "nsenter", "-t", pid, "-a", "--", "env", "-i", "HOME=/root", "bash", "-lc", command,
            timeout_s=timeout_s,
        )  # fmt: skip


CLOUD_HEAD = BedHost("bed-cloud", "10.97.0.10", ("clc",))
CLUSTER_HEAD = BedHost("bed-head", "10.97.0.20", ("cc", "vde"))
WORKERS = (
    BedHost("bed-w1", "10.97.1.11", ("nc", "vde"), jump=CLUSTER_HEAD.address),
    BedHost("bed-w2", "10.97.1.12", ("nc", "vde"), jump=CLUSTER_HEAD.address),
)
HOSTS = (CLOUD_HEAD, CLUSTER_HEAD, *WORKERS)
WORKERS_GATEWAY = "10.97.1.1"  # the cluster head, on its workers' network


def inventory(key: str) -> dict[str, Any]:
    """The bed as an Ansible inventory: a cloud with one zone; the controller reaches
    the workers through the cluster head (ProxyCommand)."""
    hostvars: dict[str, dict[str, Any]] = {}
    for h in HOSTS:
        args = SSH_OPTIONS
        if h.jump:
            args += f" -o ProxyCommand='ssh -i {key} {SSH_OPTIONS} -W %h:%p root@{h.jump}'"
        hostvars[h.name] = {
            "ansible_host": h.address,
            "ansible_ssh_common_args": args,
            "mallee_address": h.address,
        }
        if {"cc", "nc"} & set(h.groups):
            hostvars[h.name]["mallee_zone"] = "zone-a"
        if "cc" in h.groups:
            hostvars[h.name]["mallee_worker_address"] = WORKERS_GATEWAY
    groups = {
        group: {"hosts": {h.name: None for h in HOSTS if group in h.groups}}
        for group in ("clc", "cc", "nc", "vde")
    }
    return {
        "all": {
            "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": key},
            "hosts": hostvars,
            "children": groups,
        }
    }


@contextmanager
def test_bed(folder: Path) -> Iterator[Path]:
    """The bed's bridges and hosts, booted; the inventory's path. All removed after."""
    try:
        for bridge, address in ((SITE_BRIDGE, f"{CONTROLLER}/24"), (WORKER_BRIDGE, "")):
            host.run("ip", "link", "add", bridge, "type", "bridge")
            if address:
                host.run("ip", "address", "add", address, "dev", bridge)
            host.run("ip", "link", "set", bridge, "up")
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.run("nft", "-f", "-", stdin=_masquerade("10.97.0.0/24", f'oifname != "{SITE_BRIDGE}"'))
        site, workers = (SITE_BRIDGE, CONTROLLER), (WORKER_BRIDGE, WORKERS_GATEWAY)
        up = [
            [NSPAWN_HOST, "up", CLOUD_HEAD.name, site[0], f"{CLOUD_HEAD.address}/24", site[1]],
            [NSPAWN_HOST, "up", CLUSTER_HEAD.name, site[0], f"{CLUSTER_HEAD.address}/24", site[1],
             workers[0], f"{workers[1]}/24"],
            *([NSPAWN_HOST, "up", w.name, workers[0], f"{w.address}/24", workers[1]]
              for w in WORKERS),
        ]  # fmt: skip
        host.run(NSPAWN_HOST, "base", timeout_s=600)  # the tree, once, before they share it
        booting = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for argv in up]
        for argv, process in zip(up, booting, strict=True):
            _, err = process.communicate(timeout=300)
            if process.returncode:
                raise RuntimeError(f"{shlex.join(argv)}: {err}")
        # The cluster head routes its workers out, as a site's cluster head does.
        CLUSTER_HEAD.run(
            "sysctl -qw net.ipv4.ip_forward=1 && nft -f - <<'EOF'\n"
            + _masquerade("10.97.1.0/24", 'oifname "host0"')
            + "EOF"
        )
        key = host.run(NSPAWN_HOST, "key").strip()
        (folder / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
        path = folder / "bed.yml"
        path.write_text(yaml.safe_dump(inventory(key), sort_keys=False))
        yield path
    finally:
        for h in HOSTS:
            with contextlib.suppress(HostCommandFailed):
                host.run(NSPAWN_HOST, "down", h.name, timeout_s=120)
        for bridge in (SITE_BRIDGE, WORKER_BRIDGE):
            with contextlib.suppress(HostCommandFailed):
                host.run("ip", "link", "del", bridge)
        with contextlib.suppress(HostCommandFailed):
            host.run("nft", "delete", "table", "ip", NAT_TABLE)


def _masquerade(source: str, condition: str) -> str:
    return (
        f"table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n"
        f"table ip {NAT_TABLE} {{\n chain postrouting {{\n"
        f"  type nat hook postrouting priority srcnat;\n"
        f"  ip saddr {source} {condition} masquerade\n }}\n}}\n"
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counts per host."""
    counts = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines()[1:]:
        if m := re.match(r"(\S+)\s+:\s+(.*)", line):
            counts[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
    return counts


def host_state(h: BedHost) -> dict[str, list[str]]:
    """What an install must leave as it found it (but for what README.md lists): the
    installed packages, every file under /etc with its digest or link target, what
    /opt, /var/lib, /usr/local/bin and root's home hold, the running services."""
    return {
        "packages": h.run(
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n'"
        ).splitlines(),
        "etc": h.run("find /etc -xdev -printf '%p %y %m %u:%g %l\\n' | sort").splitlines(),
        "etc contents": h.run(
            "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum"
        ).splitlines(),
        "folders": h.run(
            'for d in /opt /var/lib /usr/local/bin /root; do ls -A $d | sed "s|^|$d/|"; done'
        ).splitlines(),
        "services": h.run(
            "systemctl list-units --type=service --state=running --no-legend --plain"
            " | awk '{print $1}' | sort"
        ).splitlines(),
    }
