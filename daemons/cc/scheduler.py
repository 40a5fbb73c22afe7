"""Placement policies: which node takes the next instance.

One interface, ``Policy.choose``, over the candidates (nodes that are up, in
registration order, with what they have free now). ``place`` places a whole batch,
taking each placement off the chosen node's free capacity before the next, and
places all of it or nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from mallee.common.capacity import Capacity, VmType


@dataclass(frozen=True)
class Candidate:
    name: str
    position: int  # registration order
    most: Capacity
    free: Capacity


class Policy(Protocol):
    name: ClassVar[str]

    def choose(self, vm: VmType, candidates: Sequence[Candidate]) -> Candidate | None: ...


class FirstFit:
    """The seed's policy: the first node, in registration order, with room."""

    name: ClassVar[str] = "first-fit"

    def choose(self, vm: VmType, candidates: Sequence[Candidate]) -> Candidate | None:
        return next((c for c in candidates if c.free.fits(vm)), None)


class RoundRobin:
    """The node registered after the one chosen last (across requests, even when that
    one has gone), skipping full ones."""

    name: ClassVar[str] = "round-robin"

    def __init__(self) -> None:
        self.last = -1  # position of the node chosen last

    def choose(self, vm: VmType, candidates: Sequence[Candidate]) -> Candidate | None:
        after = [c for c in candidates if c.position > self.last]
        before = [c for c in candidates if c.position <= self.last]
        for candidate in [*after, *before]:
            if candidate.free.fits(vm):
                self.last = candidate.position
                return candidate
        return None


class Spread:
    """The emptiest node (lowest load: its fullest resource's used share) with room."""

    name: ClassVar[str] = "spread"

    def choose(self, vm: VmType, candidates: Sequence[Candidate]) -> Candidate | None:
        fitting = [c for c in candidates if c.free.fits(vm)]
        return min(fitting, key=lambda c: c.free.load(c.most), default=None)


class Pack:
    """The fullest node that still has room, keeping other nodes empty."""

    name: ClassVar[str] = "pack"

    def choose(self, vm: VmType, candidates: Sequence[Candidate]) -> Candidate | None:
        fitting = [c for c in candidates if c.free.fits(vm)]
        return max(fitting, key=lambda c: c.free.load(c.most), default=None)


POLICIES: dict[str, Callable[[], Policy]] = {
    FirstFit.name: FirstFit,
    RoundRobin.name: RoundRobin,
    Spread.name: Spread,
    Pack.name: Pack,
}


def policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"scheduler = {name!r}: choose one of {sorted(POLICIES)}") from None


def place(
    chooser: Policy, vms: Sequence[VmType], candidates: Sequence[Candidate]
) -> list[str] | None:
    """Node names for each of ``vms`` in order, or None when they do not all fit (and
    then ``chooser`` is left as it was: a refused batch moves no round-robin cursor)."""
    trial = copy.deepcopy(chooser)
    pool = list(candidates)
    chosen = []
    for vm in vms:
        candidate = trial.choose(vm, pool)
        if candidate is None:
            return None
        chosen.append(candidate.name)
        pool[pool.index(candidate)] = replace(candidate, free=candidate.free.minus(vm))
    vars(chooser).update(vars(trial))
    return chosen
