"""The VDE checks apply to a cloud whose overlay is VDE."""

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _overlay_is_vde(inventory: dict[str, Any]) -> None:
    if inventory["mallee_overlay"] != "vde":
        pytest.skip(f"this cloud's overlay is {inventory['mallee_overlay']!r}, not VDE")
