"""Each VLAN's slice of the private subnet, as the CLC and the CC both compute it."""

from __future__ import annotations

import pytest

from mallee.common import slices


def test_vlan_n_has_the_nth_slice_and_its_first_host_routes_it() -> None:
    piece = slices.slice_of("10.200.0.0/16", 24, 7)
    assert str(piece) == "10.200.7.0/24"
    assert slices.router_of(piece) == "10.200.7.1"
    assert str(slices.slice_of("172.31.0.0/16", 28, 1)) == "172.31.0.16/28"


@pytest.mark.parametrize("vlan", [0, 256])
def test_a_vlan_without_a_slice_is_refused(vlan: int) -> None:
    with pytest.raises(ValueError, match=r"10\.200\.0\.0/16 cut into /24 has slices 1 to 255"):
        slices.slice_of("10.200.0.0/16", 24, vlan)


@pytest.mark.parametrize(
    ("subnet", "prefix", "message"),
    [
        ("10.200.0.0/24", 24, "one slice, and slice 0 is not used"),
        ("10.200.0.0/24", 16, "a slice must be within it"),
        ("10.200.0.0/16", 31, "/30 at most"),
        ("banana", 24, r"\[cc\] private_subnet, private_slice_prefix"),
    ],
)
def test_settings_that_leave_no_slice_are_refused(subnet: str, prefix: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slices.check("cc", subnet, prefix)
