"""Certificates and keys: make a self-signed client certificate, encrypt a key; fingerprints.

Shared by ``kata-events init``, the emulator (whose certificate authority builds on `make_cert`) and
the tests. Everything returns PEM bytes; files are
written by :func:`kata_events.private_file.write_private_file` (re-exported here), atomically with
mode 0600 because keys must never be readable by others, not even for an instant. This module never
logs and never prints.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kata_events.private_file import PathLike, write_private_file

# Backdating absorbs small clock differences between the machine that makes a certificate and the one
# that checks it.
_BACKDATE = datetime.timedelta(minutes=5)
#: Extensions marked critical: a verifier that does not know them must refuse the certificate.
_CRITICAL = (x509.BasicConstraints, x509.KeyUsage)


@dataclass(frozen=True)
class KeyAndCert:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    def write(self, cert_path: PathLike, key_path: PathLike) -> None:
        write_private_file(cert_path, self.cert_pem)
        write_private_file(key_path, self.key_pem)

    @property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.cert_pem)


_NEW_KEY = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def _key_pem(key, encryption: Optional[serialization.KeySerializationEncryption] = None) -> bytes:  # noqa: ANN001
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def encrypt_key_pem(key_pem: bytes, passphrase: bytes) -> bytes:
    """An unencrypted PEM private key → encrypted PKCS#8 (``-----BEGIN ENCRYPTED PRIVATE KEY-----``),
    with the strongest scheme cryptography offers (PBES2 with AES-256), as OpenSSL 1.1 and later read."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return _key_pem(key, serialization.BestAvailableEncryption(passphrase))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    name: str,
    key_type: str,
    not_after: datetime.datetime,
    extensions: Iterable[x509.ExtensionType],
    ca: Optional[KeyAndCert] = None,
) -> KeyAndCert:
    """A new key and its certificate for ``name``, valid until ``not_after``: signed by ``ca``, or
    self-signed. Every certificate made here has a random serial, is backdated, and names its key's
    identifier."""
    key = _NEW_KEY[key_type]()  # "rsa" or "ec"
    signer, issuer = key, _name(name)
    if ca is not None:
        signer = serialization.load_pem_private_key(ca.key_pem, password=None)
        issuer = x509.load_pem_x509_certificate(ca.cert_pem).subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.now(datetime.timezone.utc) - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, _CRITICAL))
    cert = builder.sign(signer, hashes.SHA256())
    return KeyAndCert(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def days_from_now(days: int) -> datetime.datetime:
    """The moment ``days`` from now (UTC): when a certificate made now for that many days expires."""
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)


def make_self_signed_cert(common_name: str, days: int = 3650, key_type: str = "rsa") -> KeyAndCert:
    """A self-signed client certificate and key, like ``openssl req -x509 -newkey rsa:2048 -nodes``."""
    usage = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
    ]
    return make_cert(common_name, key_type, days_from_now(days), usage)


def sha256_fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 of the DER encoding of a certificate given as PEM (the first one in the text) or DER:
    lowercase hex, no colons."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        pem_or_der = x509.load_pem_x509_certificate(pem_or_der).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(pem_or_der).hexdigest()


def file_fingerprint(cert_path: PathLike) -> Optional[str]:
    """SHA-256 (hex) of the first certificate in a PEM file, or None if it cannot be read."""
    try:
        with open(cert_path, "rb") as fh:
            return sha256_fingerprint(fh.read())
    except (OSError, ValueError):
        return None
