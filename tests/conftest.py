"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http import FileServer, serve_directory

# The conformance checks of an installed cloud run against an inventory's hosts
# (tests/infra/pytest.ini); the end-to-end tests run them on their test bed.
collect_ignore = ["infra"]


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    with serve_directory(root) as server:
        yield server
