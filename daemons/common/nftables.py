"""nftables through its JSON API (``nft -j -f -``, libnftables' own format).

A batch is one kernel transaction: it applies whole or not at all, so a bad rule
anywhere leaves the previous ruleset in place. Tables are replaced whole (add, delete,
add again in one batch: nft 1.0.6 has no ``destroy``), which makes every change
idempotent and leaves no rule of an older ruleset behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mallee.common import host

# nft answers in milliseconds; one that does not is stuck on the kernel's netlink lock.
NFT_TIMEOUT_S = 10.0

Command = dict[str, Any]
Expr = dict[str, Any]


def table_name(component: str, owner: str) -> str:
    """``mallee_<component>_<owner>``: mallee's tables are known by the prefix, and
    several daemons of one kind may share a host (tests do)."""
    return f"mallee_{component}_" + re.sub(r"[^A-Za-z0-9_]", "_", owner)


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def field(protocol: str, name: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": name}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def apply(commands: list[Command]) -> None:
    """Run ``commands`` as one transaction; HostCommandFailed if the kernel refuses any."""
    host.run(
        "nft", "-j", "-f", "-", timeout_s=NFT_TIMEOUT_S, stdin=json.dumps({"nftables": commands})
    )


def replace_table(family: str, name: str, contents: list[Command]) -> list[Command]:
    """The commands that make table ``family name`` hold exactly ``contents`` (chains,
    sets, rules, each naming this table), whatever it held before."""
    table = {"family": family, "name": name}
    return [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        *contents,
    ]


def remove_table(family: str, name: str) -> list[Command]:
    """The commands that remove table ``family name`` if it exists."""
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"delete": {"table": table}}]


class HeldTable:
    """A table of a daemon's that is there exactly while something needs it: written
    whole (``contents``) when first held, removed when let go. The first call writes or
    removes it either way, since a daemon killed before left it as it was then."""

    def __init__(self, family: str, name: str, contents: Callable[[], list[Command]]) -> None:
        self.family = family
        self.name = name
        self.contents = contents
        self._held: bool | None = None  # unknown until the first hold()

    def hold(self, needed: bool) -> None:
        if self._held == needed:
            return
        if needed:
            apply(replace_table(self.family, self.name, self.contents()))
        else:
            apply(remove_table(self.family, self.name))
        self._held = needed
