"""Key pairs, as EC2 keeps them: made here (the private key handed over once, never
kept) or imported (a public key), each with EC2's fingerprint.

EC2's fingerprints differ by origin and type, and clients compare them: a created RSA
key's is the SHA-1 of its PKCS#8 private key, an imported RSA key's the MD5 of its DER
public key (both as colon-separated hex); an ed25519 key's is the base64 SHA-256 of its
OpenSSH public key, however it came.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from mallee.clc.db import KeyPair, flush_or
from mallee.clc.users import Caller
from mallee.clc.wire import Ec2Error

KEY_TYPES = ("rsa", "ed25519")
RSA_SIZES = (1024, 2048, 4096)  # what EC2 imports
RSA_BITS = 2048  # what it makes


@dataclass(frozen=True)
class Made:
    """A key pair just made, with the private key the caller gets once."""

    record: KeyPair
    private_key: str


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def _openssh(public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _ed25519_fingerprint(public: ed25519.Ed25519PublicKey) -> str:
    blob = base64.b64decode(_openssh(public).split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def _check_name(name: str) -> None:
    if not name or len(name) > 255 or not all(" " <= c <= "~" for c in name):
        raise Ec2Error(
            "InvalidParameterValue", "Key pair names are 1 to 255 printable ASCII characters"
        )


def _store(
    db: Session,
    caller: Caller,
    name: str,
    key_type: str,
    fingerprint: str,
    public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
) -> KeyPair:
    record = KeyPair(
        key_pair_id=_new_id(),
        owner=caller.user,
        name=name,
        key_type=key_type,
        fingerprint=fingerprint,
        public_key=_openssh(public).decode(),
    )
    db.add(record)
    flush_or(db, Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists."))
    return record


def _new_id() -> str:
    return "key-" + secrets.token_hex(9)[:17]


def create(db: Session, caller: Caller, name: str, key_type: str = "rsa") -> Made:
    _check_name(name)
    if key_type not in KEY_TYPES:
        raise Ec2Error("InvalidParameterValue", f"KeyType {key_type!r}: choose rsa or ed25519")
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pkcs8 = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fingerprint = _colon_hex(hashlib.sha1(pkcs8).digest())
        material = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey = private.public_key()
    else:
        private_ed = ed25519.Ed25519PrivateKey.generate()
        material = private_ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = private_ed.public_key()
        fingerprint = _ed25519_fingerprint(public)
    record = _store(db, caller, name, key_type, fingerprint, public)
    return Made(record, material.decode())


def import_(db: Session, caller: Caller, name: str, material: bytes) -> KeyPair:
    """A public key in OpenSSH form (``ssh-rsa AAAA...``), or PEM."""
    _check_name(name)
    try:
        if material.lstrip().startswith(b"-----BEGIN"):
            public = serialization.load_pem_public_key(material)
        else:
            public = serialization.load_ssh_public_key(material.strip())
    except (ValueError, TypeError, IndexError):
        raise Ec2Error(
            "InvalidKey.Format",
            "Key is not in valid OpenSSH public key format (ssh-rsa or ssh-ed25519)",
        ) from None
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size not in RSA_SIZES:
            raise Ec2Error(
                "InvalidKey.Format", f"RSA keys of {RSA_SIZES} bits only, not {public.key_size}"
            )
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fingerprint, key_type = _colon_hex(hashlib.md5(der).digest()), "rsa"
    elif isinstance(public, ed25519.Ed25519PublicKey):
        fingerprint, key_type = _ed25519_fingerprint(public), "ed25519"
    else:
        raise Ec2Error("InvalidKey.Format", "Only RSA and ed25519 keys are taken")
    return _store(db, caller, name, key_type, fingerprint, public)


def describe(db: Session, caller: Caller, names: list[str], ids: list[str]) -> list[KeyPair]:
    """The caller's key pairs (an admin's: everyone's), all or those named; a name or id
    that is not there is an error, as in EC2."""
    query = select(KeyPair).order_by(KeyPair.created_at, KeyPair.name)
    if not caller.admin:
        query = query.where(KeyPair.owner == caller.user)
    pairs = list(db.scalars(query))
    if names:
        if missing := sorted(set(names) - {p.name for p in pairs}):
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{missing[0]}' does not exist")
        pairs = [p for p in pairs if p.name in names]
    if ids:
        if missing := sorted(set(ids) - {p.key_pair_id for p in pairs}):
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{missing[0]}' does not exist")
        pairs = [p for p in pairs if p.key_pair_id in ids]
    return pairs


def delete(db: Session, caller: Caller, name: str | None, key_pair_id: str | None) -> str | None:
    """Delete the caller's key pair named so; a name that is not there deletes nothing
    and is no error (EC2's behaviour). Returns the deleted key pair's id."""
    if not name and not key_pair_id:
        raise Ec2Error(
            "MissingParameter", "The request must contain the parameter KeyName or KeyPairId"
        )
    query = select(KeyPair).where(KeyPair.owner == caller.user)
    query = (
        query.where(KeyPair.name == name)
        if name
        else query.where(KeyPair.key_pair_id == key_pair_id)
    )
    record = db.scalars(query).first()
    if record is None:
        return None
    db.delete(record)
    return record.key_pair_id
