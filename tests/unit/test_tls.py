"""The cloud CA and its certificates, checked by real TLS handshakes over a socket pair:
the server asks for a client certificate as the daemons do (CERT_OPTIONAL) and reads the
caller's role with ``peer_role``."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from mallee.common import tls

Pair = tuple[Path, Path]  # certificate, key


def handshake(
    ca: Path, server: Pair, client: Pair | None, hostname: str
) -> tuple[str | BaseException | None, BaseException | None]:
    """One connection: (the role the server read, or its error), (the client's error)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*server)
    server_context.load_verify_locations(ca)
    server_context.verify_mode = ssl.CERT_OPTIONAL
    client_context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        client_context.load_cert_chain(*client)
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)
    seen: list[str | BaseException | None] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_end, server_side=True) as conn:
                seen.append(tls.peer_role({"gunicorn.socket": conn}))
                conn.sendall(b"ok")
        except (OSError, ssl.SSLError) as e:
            seen.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    client_error: BaseException | None = None
    try:
        with client_context.wrap_socket(client_end, server_hostname=hostname) as conn:
            if conn.recv(2) != b"ok":
                raise ConnectionError("the server closed the connection")
    except (OSError, ssl.SSLError) as e:
        client_error = e
    finally:
        client_end.close()
        thread.join(10)
    assert not thread.is_alive(), "the server side of the handshake hung"
    return seen[0], client_error


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    tls.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_issued_certificates_authenticate_both_ends(ca: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    nc = tls.issue(ca, out, "nc-node1", "nc", ["node1", "127.0.0.1"])
    cc = tls.issue(ca, out, "cc-head", "cc", ["head"])
    for key in (ca / "ca.key", nc[1], cc[1]):
        assert key.stat().st_mode & 0o777 == 0o600, f"{key} is readable by others"
    # the client trusts the NC by its DNS name and by its IP address, through the CA
    for name in ("node1", "127.0.0.1"):
        role, client_error = handshake(ca / "ca.pem", nc, cc, name)
        assert client_error is None
        assert role == "cc"  # the server reads the caller's role from its certificate
    # without a certificate the server still answers, and knows no role
    assert handshake(ca / "ca.pem", nc, None, "node1") == (None, None)


def test_a_name_not_in_the_certificate_is_refused(ca: Path, tmp_path: Path) -> None:
    nc = tls.issue(ca, tmp_path, "nc-node1", "nc", ["node1", "127.0.0.1"])
    for name, mismatch in (("node2", "Hostname mismatch"), ("127.0.0.2", "IP address mismatch")):
        _, client_error = handshake(ca / "ca.pem", nc, None, name)
        assert isinstance(client_error, ssl.SSLCertVerificationError)
        assert mismatch in str(client_error)


def test_a_certificate_of_another_ca_is_refused(ca: Path, tmp_path: Path) -> None:
    nc = tls.issue(ca, tmp_path, "nc-node1", "nc", ["node1"])
    tls.create_ca(tmp_path / "other")
    stranger = tls.issue(tmp_path / "other", tmp_path / "stranger", "cc-x", "cc", [])
    role, _ = handshake(ca / "ca.pem", nc, stranger, "node1")
    assert isinstance(role, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(role)


def test_refuses_to_replace_a_ca(ca: Path) -> None:
    before = (ca / "ca.pem").read_bytes(), (ca / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to replace the cloud's CA"):
        tls.create_ca(ca)
    assert ((ca / "ca.pem").read_bytes(), (ca / "ca.key").read_bytes()) == before


def test_unknown_role(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="role 'root' is not one of"):
        tls.issue(ca, tmp_path / "out", "x", "root", [])
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls.main(["init", str(tmp_path)])
    tls.main(["issue", str(tmp_path), "cc-head", "--role", "cc", "--san", "head"])
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / n) for n in ("ca.pem", "cc-head.pem", "cc-head.key")]
    cert = x509.load_pem_x509_certificate((tmp_path / "cc-head.pem").read_bytes())
    ou = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["cc"]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["head"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it


def test_no_tls_socket_no_role() -> None:
    assert tls.peer_role({}) is None
    with socket.socket() as plain:
        assert tls.peer_role({"gunicorn.socket": plain}) is None
