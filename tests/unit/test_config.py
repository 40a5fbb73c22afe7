import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mallee.cc.config import CcConfig
from mallee.clc import addresses
from mallee.clc.config import ClcConfig
from mallee.common import config
from mallee.common.server import gunicorn_options
from mallee.nc.config import NcConfig

EXAMPLE = Path(__file__).parents[2] / "etc" / "mallee.conf.example"
SECTIONS: list[type[Any]] = [config.CommonConfig, NcConfig, CcConfig, ClcConfig]


def write(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mallee.conf"
    path.write_text(text)
    monkeypatch.setenv(config.PATH_ENV, str(path))


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.PATH_ENV, str(tmp_path / "absent.conf"))
    common, nc = config.load(NcConfig)
    assert common.tls is True
    assert nc.port == 8775 and nc.allowed_clients == ["cc"]
    _, cc = config.load(CcConfig)
    assert cc.port == 8774 and cc.allowed_clients == ["clc", "admin"]


def test_file_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nport = 9000\nswap_mb = 0\n[common]\ntls = false\n", monkeypatch)
    common, nc = config.load(NcConfig, {"nc": {"swap_mb": 64}})
    assert (common.tls, nc.port, nc.swap_mb) == (False, 9000, 64)


def test_each_daemon_reads_its_own_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One host's file holds every component's section; each daemon takes only its own,
    with the shared keys (listen, port, ...) of its own section."""
    write(tmp_path, "[nc]\nport = 9000\nswap_mb = 0\n[cc]\nport = 9001\n[clc]\n", monkeypatch)
    assert config.load(NcConfig)[1].port == 9000
    assert config.load(CcConfig)[1].port == 9001


def test_unknown_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nprot = 9000\n", monkeypatch)
    with pytest.raises(config.ConfigError, match=r"\[nc\].*prot"):
        config.load(NcConfig)
    # a key of another daemon's section is unknown here
    write(tmp_path, '[cc]\nnode_name = "n1"\n', monkeypatch)
    with pytest.raises(config.ConfigError, match=r"\[cc\].*node_name"):
        config.load(CcConfig)


def test_wrong_type_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[nc]\nport = "9000"\n', monkeypatch)
    with pytest.raises(config.ConfigError, match="port: expected"):
        config.load(NcConfig)
    write(tmp_path, "[cc]\nallowed_clients = [1]\n", monkeypatch)
    with pytest.raises(config.ConfigError, match="allowed_clients"):
        config.load(CcConfig)


def test_unknown_section_and_bad_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nx]\nport = 1\n", monkeypatch)
    with pytest.raises(config.ConfigError, match="nx"):
        config.load(NcConfig)
    write(tmp_path, "[nc\n", monkeypatch)
    with pytest.raises(config.ConfigError, match=r"mallee\.conf"):
        config.load(NcConfig)


def test_float_setting_takes_an_int(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[nc]\nmonitor_interval_s = 2\n", monkeypatch)
    assert config.load(NcConfig)[1].monitor_interval_s == 2


def test_server_binds_every_port_of_the_section() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class TwoPorts(config.DaemonConfig):
        port: int = 8773
        admin_port: int = 8443
        threads: int = 4
        tls_cert: str = "/c.pem"
        tls_key: str = "/c.key"
        allowed_clients: list[str] = dataclasses.field(default_factory=list)

        def ports(self) -> list[int]:
            return [self.port, self.admin_port]

    options = gunicorn_options(config.CommonConfig(), TwoPorts(listen="10.0.0.1"))
    assert options["bind"] == ["10.0.0.1:8773", "10.0.0.1:8443"]
    assert (options["certfile"], options["threads"]) == ("/c.pem", 4)
    assert gunicorn_options(config.CommonConfig(), NcConfig())["bind"] == ["0.0.0.0:8775"]


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    parsed = tomllib.loads(re.sub(r"^# (node_name = .*)$", r"\1", text, flags=re.M))
    assert set(parsed) == {cls.section_name for cls in SECTIONS}
    for cls in SECTIONS:
        name = cls.section_name
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(parsed[name]) == keys, name
        defaults = cls()
        for key in keys - {"node_name"}:
            assert parsed[name][key] == getattr(defaults, key), f"[{name}] {key}"


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (["10.200.7.0/24"], r"'10.200.7.0/24' overlaps private_subnet 10.200.0.0/16"),
        (["10.199.255.250-10.200.0.3"], r"'10.199.255.250-10.200.0.3' overlaps private_subnet"),
        (["203.0.113.0/33"], r"\[clc\] public_addresses: '203.0.113.0/33'"),
    ],
)
def test_an_elastic_pool_that_cannot_work_is_named(pool: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        addresses.check_pool(pool, "10.200.0.0/16")


def test_an_elastic_pool_beside_the_private_subnet_is_fine() -> None:
    addresses.check_pool(["203.0.113.0/24", "10.199.0.1-10.199.255.255"], "10.200.0.0/16")
