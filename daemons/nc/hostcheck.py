"""Host problems the NC can name at start, before they show up as slow launches or as
rules that hold nothing.

When QEMU's user cannot open ``/dev/kvm`` (no udev applied Debian's ``root:kvm 0660``
rule), libvirt 9.0 finds on every lookup that KVM "was enabled when probing, but it is
not available now", re-probes QEMU each time, and a domain takes a minute to start
instead of a third of a second. The check reads the device's owner, group and mode for
the user libvirt runs QEMU as; it never tries to open the device (the NC runs as root,
which always could).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Callable, Collection
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
# Whether bridged IPv4 passes nftables' inet hooks (br_netfilter), where the security
# groups are.
BRIDGE_FILTERING = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# What Debian's libvirt runs QEMU as when qemu.conf does not say.
DEFAULT_QEMU_USER = "libvirt-qemu"
DEFAULT_QEMU_GROUP = "libvirt-qemu"
# The URIs of the host's own QEMU driver, the one qemu.conf configures.
LOCAL_QEMU_URIS = ("qemu:///system", "qemu+unix:///system")


def qemu_user_and_group(qemu_conf: Path = QEMU_CONF) -> tuple[str, str]:
    """The ``user`` and ``group`` settings of qemu.conf, else libvirt's defaults."""
    text = qemu_conf.read_text() if qemu_conf.exists() else ""

    def setting(key: str, default: str) -> str:
        match = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)
        return match.group(1) if match else default

    return setting("user", DEFAULT_QEMU_USER), setting("group", DEFAULT_QEMU_GROUP)


def _uid(user: str) -> int:
    """libvirt's spelling: a name, or ``+N`` for a numeric id. KeyError if unknown."""
    return int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    return int(group[1:]) if group.startswith("+") else grp.getgrnam(group).gr_gid


def _groups(uid: int, gid: int) -> set[int]:
    """The groups QEMU runs with: its group and, as libvirt sets them, its user's."""
    try:
        return {gid, *os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)}
    except KeyError:  # a numeric user with no passwd entry has no supplementary groups
        return {gid}


def can_read_write(mode: int, owner: int, group: int, uid: int, gids: Collection[int]) -> bool:
    """POSIX permission classes: the owner's bits for the owner, else the group's for a
    member, else the others' (not the most generous of the three)."""
    if uid == 0:
        return True  # libvirt checks root's access with access(2): always allowed
    if uid == owner:
        needed = stat.S_IRUSR | stat.S_IWUSR
    elif group in gids:
        needed = stat.S_IRGRP | stat.S_IWGRP
    else:
        needed = stat.S_IROTH | stat.S_IWOTH
    return mode & needed == needed


def _name(lookup: Callable[[int], str], number: int) -> str:
    try:
        return lookup(number)
    except KeyError:
        return str(number)


def kvm_problem(
    libvirt_uri: str,
    device: Path = KVM_DEVICE,
    qemu_conf: Path = QEMU_CONF,
    stat_device: Callable[[Path], os.stat_result] = os.stat,
) -> str | None:
    """One sentence saying what to change on this host, or None if nothing needs to."""
    if libvirt_uri.split("?")[0] not in LOCAL_QEMU_URIS or not device.exists():
        return None
    user, group = qemu_user_and_group(qemu_conf)
    try:
        uid, gid = _uid(user), _gid(group)
    except KeyError:
        return (
            f"libvirt runs QEMU as {user}:{group} (qemu.conf or its default), which this "
            f"host does not have: create them (tools/prepare-host does) or set user and "
            f"group in {qemu_conf}."
        )
    st = stat_device(device)
    if can_read_write(st.st_mode, st.st_uid, st.st_gid, uid, _groups(uid, gid)):
        return None
    owner = _name(lambda n: pwd.getpwuid(n).pw_name, st.st_uid)
    owning_group = _name(lambda n: grp.getgrgid(n).gr_name, st.st_gid)
    return (
        f"{device} is {owner}:{owning_group} {stat.S_IMODE(st.st_mode):04o}, which QEMU's "
        f"user {user} cannot open, so libvirt re-probes QEMU on every call and each domain "
        f"takes a minute to start: make it root:kvm 0660 with {user} in group kvm "
        f"(tools/prepare-host does both)."
    )


def bridge_filtering_problem(setting: Path = BRIDGE_FILTERING) -> str:
    """Why security groups would hold nothing on this host's bridges ("" if they hold):
    they filter bridged IPv4 in nftables' inet forward hook, which only br_netfilter
    lets it reach."""
    if not setting.exists():
        return (
            "bridged instance NICs cannot be filtered here: the kernel module br_netfilter "
            "is not loaded (modprobe br_netfilter; mallee's installer does so at boot), so "
            "security groups would hold nothing; without it, run instances on QEMU's "
            'user-mode network (public_bridge = "user")'
        )
    if setting.read_text().strip() != "1":
        return (
            f"bridged instance NICs cannot be filtered here: {setting} is 0, so bridged IPv4 "
            "skips nftables and security groups would hold nothing (sysctl -w "
            "net.bridge.bridge-nf-call-iptables=1; mallee's installer sets it)"
        )
    return ""
