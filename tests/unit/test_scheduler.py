"""Placement policies on known nodes: each places a known sequence where it should."""

from dataclasses import replace

import pytest

from mallee.cc import scheduler
from mallee.cc.scheduler import Candidate, place
from mallee.common.capacity import Capacity, VmType

SMALL = VmType("small", 1, 256, 1)
BIG = VmType("big", 3, 256, 1)


def nodes() -> list[Candidate]:
    """A has 2 cores, B and C have 4; memory and disk are plentiful."""
    return [
        Candidate(name, position, Capacity(cores, 8192, 8), Capacity(cores, 8192, 8))
        for position, (name, cores) in enumerate((("A", 2), ("B", 4), ("C", 4)))
    ]


def run_one_by_one(policy_name: str, sequence: list[VmType]) -> list[str]:
    """Place each request alone, as separate runInstances calls would."""
    chooser = scheduler.policy(policy_name)
    pool = nodes()
    placed = []
    for vm in sequence:
        [name] = place(chooser, [vm], pool) or ["none"]
        placed.append(name)
        pool = [replace(c, free=c.free.minus(vm)) if c.name == name else c for c in pool]
    return placed


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("first-fit", ["A", "B", "A", "B"]),  # first with room, in registration order
        ("round-robin", ["A", "B", "C", "A"]),  # the next node each time
        ("spread", ["A", "B", "C", "C"]),  # the emptiest (C is emptier than A at the end)
        ("pack", ["A", "B", "B", "A"]),  # the fullest that fits
    ],
)
def test_known_sequence(policy: str, expected: list[str]) -> None:
    assert run_one_by_one(policy, [SMALL, BIG, SMALL, SMALL]) == expected


def test_batch_is_all_or_nothing() -> None:
    assert place(scheduler.policy("first-fit"), [BIG] * 3, nodes()) is None
    assert place(scheduler.policy("first-fit"), [BIG] * 2, nodes()) == ["B", "C"]


def test_batch_counts_its_own_placements() -> None:
    assert place(scheduler.policy("spread"), [SMALL] * 4, nodes()) == ["A", "B", "C", "B"]


def test_refused_batch_does_not_move_the_round_robin_cursor() -> None:
    chooser = scheduler.policy("round-robin")
    assert place(chooser, [SMALL], nodes()) == ["A"]
    assert place(chooser, [BIG] * 3, nodes()) is None
    assert place(chooser, [SMALL], nodes()) == ["B"]


def test_round_robin_goes_on_after_a_node_that_left() -> None:
    chooser = scheduler.policy("round-robin")
    assert place(chooser, [SMALL, SMALL], nodes()) == ["A", "B"]
    without_b = [c for c in nodes() if c.name != "B"]
    assert place(chooser, [SMALL], without_b) == ["C"]


def test_no_room_no_candidates() -> None:
    assert place(scheduler.policy("pack"), [VmType("huge", 64, 1, 1)], nodes()) is None
    assert place(scheduler.policy("first-fit"), [SMALL], []) is None


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="scheduler = 'best'"):
        scheduler.policy("best")


def test_capacity_arithmetic() -> None:
    free = Capacity(4, 1024, 10)
    assert free.how_many(VmType("x", 1, 256, 1)) == 4
    assert free.how_many(VmType("x", 1, 2048, 1)) == 0
    assert free.minus(VmType("x", 1, 256, 1)) == Capacity(3, 768, 9)
    assert Capacity(1, 512, 5).load(Capacity(4, 1024, 10)) == pytest.approx(0.75)
