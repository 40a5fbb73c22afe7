from pathlib import Path

import pytest

from mallee.cc.registry import NodeRegistry
from mallee.common.errors import NodeAlreadyRegistered, NodeNotFound


def test_nodes_survive_a_restart_in_registration_order(tmp_path: Path) -> None:
    registry = NodeRegistry(tmp_path / "cc.db")
    registry.add("b", "https://b:8775")
    registry.add("a", "https://a:8775")
    registry.remove("b")
    registry.add("c", "https://c:8775")
    assert [n.name for n in NodeRegistry(tmp_path / "cc.db").all()] == ["a", "c"]


def test_one_node_one_spelling(tmp_path: Path) -> None:
    registry = NodeRegistry(tmp_path / "cc.db")
    registry.add("a", "https://Node1:8775/")
    with pytest.raises(NodeAlreadyRegistered, match="node a at https://node1:8775"):
        registry.add("b", "HTTPS://node1:8775")
    with pytest.raises(NodeAlreadyRegistered):
        registry.add("a", "https://elsewhere:8775")
    with pytest.raises(NodeNotFound):
        registry.remove("nowhere")


def test_a_late_report_never_replaces_a_newer_one(tmp_path: Path) -> None:
    registry = NodeRegistry(tmp_path / "cc.db")
    registry.add("a", "https://a:8775")
    # polls begun at (monotonic) 2 and 1; the wall clock stepped back between them
    registry.save_report("a", 2.0, 1000.0, {"i-1": {"state": "running"}})
    registry.save_report("a", 1.0, 2000.0, {})
    assert NodeRegistry(tmp_path / "cc.db").reports() == {
        "a": (1000.0, {"i-1": {"state": "running"}})
    }
    registry.save_report("a", 3.0, 900.0, {})  # a newer poll, the wall clock further back
    assert registry.reports() == {"a": (900.0, {})}
    registry.remove("a")
    assert registry.reports() == {}
