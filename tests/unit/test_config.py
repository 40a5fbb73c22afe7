import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from mallee.common import config

EXAMPLE = Path(__file__).parents[2] / "etc" / "mallee.conf.example"


def write(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mallee.conf"
    path.write_text(text)
    monkeypatch.setenv(config.PATH_ENV, str(path))


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.PATH_ENV, str(tmp_path / "absent.conf"))
    common, nc = config.load("nc")
    assert common.tls is True
    assert nc.port == 8775 and nc.allowed_clients == ["cc"]


def test_file_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nport = 9000\nswap_mb = 0\n[common]\ntls = false\n", monkeypatch)
    common, nc = config.load("nc", {"nc": {"swap_mb": 64}})
    assert (common.tls, nc.port, nc.swap_mb) == (False, 9000, 64)


def test_unknown_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nprot = 9000\n", monkeypatch)
    with pytest.raises(config.ConfigError, match=r"\[nc\].*prot"):
        config.load("nc")


def test_wrong_type_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[nc]\nport = "9000"\n', monkeypatch)
    with pytest.raises(config.ConfigError, match="port: expected"):
        config.load("nc")
    write(tmp_path, "[nc]\nallowed_clients = [1]\n", monkeypatch)
    with pytest.raises(config.ConfigError, match="allowed_clients"):
        config.load("nc")


def test_unknown_section_and_bad_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nx]\nport = 1\n", monkeypatch)
    with pytest.raises(config.ConfigError, match="nx"):
        config.load("nc")
    write(tmp_path, "[nc\n", monkeypatch)
    with pytest.raises(config.ConfigError, match=r"mallee\.conf"):
        config.load("nc")


def test_float_setting_takes_an_int(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nmonitor_interval_s = 2\n", monkeypatch)
    assert config.load("nc")[1].monitor_interval_s == 2


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    parsed = tomllib.loads(re.sub(r"^# (node_name = .*)$", r"\1", text, flags=re.M))
    for name, cls in config.SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(parsed[name]) == keys, name
        defaults = cls()
        for key in keys - {"node_name"}:
            assert parsed[name][key] == getattr(defaults, key), f"[{name}] {key}"
