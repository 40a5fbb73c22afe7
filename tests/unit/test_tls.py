import ssl
from pathlib import Path

import pytest
from cryptography import x509

from mallee.common import tls


def test_issue_and_verify_chain(tmp_path: Path) -> None:
    tls.create_ca(tmp_path)
    cert, key = tls.issue(tmp_path, tmp_path / "out", "nc-node1", "nc", ["node1", "127.0.0.1"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    ou = parsed.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert ou[0].value == "nc"
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node1" in sans.get_values_for_type(x509.DNSName)
    # the standard library accepts the pair and trusts it through the CA
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(cert, key)


def test_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    tls.create_ca(tmp_path)
    with pytest.raises(FileExistsError):
        tls.create_ca(tmp_path)


def test_unknown_role(tmp_path: Path) -> None:
    tls.create_ca(tmp_path)
    with pytest.raises(ValueError, match="role"):
        tls.issue(tmp_path, tmp_path, "x", "root", [])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls.main(["init", str(tmp_path)])
    tls.main(["issue", str(tmp_path), "cc-head", "--role", "cc", "--san", "head"])
    assert (tmp_path / "cc-head.pem").exists()
    assert "cc-head.key" in capsys.readouterr().out


def test_no_socket_no_role() -> None:
    assert tls.peer_role({}) is None
