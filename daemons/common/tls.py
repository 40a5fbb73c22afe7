"""The cloud's small CA, and who is calling.

Every component gets a certificate from one cloud CA: CN names the host's component
(``nc-node1``), OU names its role (``nc``, ``cc``, ``clc``, or ``admin`` for an operator's
tools). Servers ask for a client
certificate (gunicorn ``cert_reqs = CERT_OPTIONAL``): TLS itself refuses certificates of
another CA, and the app answers a missing certificate (401) or a role it does not serve
(403) with a JSON error, which a plain ``CERT_REQUIRED`` handshake failure cannot give.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("nc", "cc", "clc", "admin")


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(ca_dir: Path, name: str = "mallee cloud CA", days: int = 3650) -> Path:
    """Write ``ca.pem`` and ``ca.key`` into ``ca_dir``; refuse to overwrite an existing CA."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; refusing to replace the cloud's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    ca_dir: Path, out_dir: Path, name: str, role: str, sans: Sequence[str], days: int = 825
) -> tuple[Path, Path]:
    """Issue ``out_dir/<name>.pem`` and ``.key`` for a component of ``role``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for san in sans:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt_names.append(x509.DNSName(san))
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_key(key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def peer_role(environ: Mapping[str, Any]) -> str | None:
    """The OU of the verified client certificate on this request's socket, if any."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    subject = x509.load_der_x509_certificate(der).subject
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if units else ""


def main(argv: Sequence[str] | None = None) -> None:
    """``mallee-ca``: make the cloud CA and the components' certificates."""
    parser = argparse.ArgumentParser(prog="mallee-ca", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create ca.pem and ca.key in DIR")
    init.add_argument("dir", type=Path)
    cert = sub.add_parser("issue", help="issue NAME.pem and NAME.key signed by the CA in DIR")
    cert.add_argument("dir", type=Path)
    cert.add_argument("name")
    cert.add_argument("--role", required=True, choices=ROLES)
    cert.add_argument("--san", action="append", default=[], help="DNS name or IP (repeat)")
    cert.add_argument("--out", type=Path, help="output folder (default: DIR)")
    args = parser.parse_args(argv)
    if args.command == "init":
        print(create_ca(args.dir))
    else:
        for path in issue(args.dir, args.out or args.dir, args.name, args.role, args.san):
            print(path)
