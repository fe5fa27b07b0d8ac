"""Certificates and keys: make a CA, a server certificate, a self-signed client certificate; fingerprints.

Shared by the emulator, the tests and ``kata-events init``. Everything returns PEM bytes; files are
written by :func:`kata_events.private_file.write_private_file` (re-exported here), atomically with
mode 0600 because keys must never be readable by others, not even for an instant. This module never
logs and never prints.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
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
        """Write the certificate and the key, each with mode 0600."""
        write_private_file(cert_path, self.cert_pem)
        write_private_file(key_path, self.key_pem)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, lowercase hex."""
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


def _make(
    name: str,
    key_type: str,
    days: int,
    extensions: Iterable[x509.ExtensionType],
    ca: Optional[KeyAndCert] = None,
) -> KeyAndCert:
    """A new key and its certificate for ``name``: signed by ``ca`` (and valid no longer), or self-signed.

    Every certificate made here has a random serial, is backdated, and names its key's identifier.
    """
    if key_type not in _NEW_KEY:
        raise ValueError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")
    key = _NEW_KEY[key_type]()
    signer, issuer, cap = key, _name(name), None
    if ca is not None:
        signer = serialization.load_pem_private_key(ca.key_pem, password=None)
        issuer = x509.load_pem_x509_certificate(ca.cert_pem).subject
        cap = cert_not_after(ca.cert_pem)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after if cap is None else min(not_after, cap))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, _CRITICAL))
    cert = builder.sign(signer, hashes.SHA256())
    return KeyAndCert(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_ca(
    common_name: str = "kata-events emulator CA", days: int = 3650, key_type: str = "ec"
) -> KeyAndCert:
    """A self-signed certificate authority able to sign server certificates."""
    # KeyUsage's flags in order: only digital_signature, key_cert_sign and crl_sign are set.
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    return _make(common_name, key_type, days, [x509.BasicConstraints(ca=True, path_length=0), usage])


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_server_cert(
    ca: KeyAndCert,
    hostnames: Iterable[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 825,
    key_type: str = "ec",
) -> KeyAndCert:
    """A TLS server certificate signed by ``ca``, valid for ``hostnames`` (DNS names or IP addresses)."""
    names = list(dict.fromkeys(hostnames))
    if not names:
        raise ValueError("a server certificate needs at least one host name")
    issuer_key = x509.load_pem_x509_certificate(ca.cert_pem).public_key()
    extensions = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.SubjectAlternativeName([_san_entry(n) for n in names]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),
    ]
    return _make(names[0], key_type, days, extensions, ca)


def make_self_signed_cert(common_name: str, days: int = 3650, key_type: str = "rsa") -> KeyAndCert:
    """A self-signed client certificate and key, like ``openssl req -x509 -newkey rsa:2048 -nodes``."""
    usage = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
    ]
    return _make(common_name, key_type, days, usage)


def load_cert_der(pem_or_der: bytes) -> bytes:
    """The DER bytes of a certificate given as PEM (the first one in the text) or DER."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(pem_or_der).public_bytes(serialization.Encoding.DER)
    return pem_or_der


def sha256_fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER encoding: lowercase hex, no colons."""
    return hashlib.sha256(load_cert_der(pem_or_der)).hexdigest()


def file_fingerprint(cert_path: PathLike) -> Optional[str]:
    """SHA-256 (hex) of the first certificate in a PEM file, or None if it cannot be read."""
    try:
        with open(cert_path, "rb") as fh:
            return sha256_fingerprint(fh.read())
    except (OSError, ValueError):
        return None


def format_fingerprint(hex_fingerprint: str) -> str:
    """``"abcd..."`` (colons optional) as ``"AB:CD:..."``, the way certificate dialogs show it."""
    clean = normalize_fingerprint(hex_fingerprint)
    return ":".join(clean[i : i + 2] for i in range(0, len(clean), 2)).upper()


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint in any usual spelling (colons, spaces, either case) as lowercase hex;
    ``ValueError`` when it is not 32 bytes of hex."""
    clean = re.sub(r"[\s:]", "", text).lower()
    if clean.startswith("sha256"):
        clean = clean[len("sha256") :].lstrip("=/")
    if not re.fullmatch(r"[0-9a-f]{64}", clean):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits, colons optional): {text!r}")
    return clean


def cert_subject_alt_names(pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate's SAN extension lists (empty when it has none)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]


def cert_not_after(pem: bytes) -> datetime.datetime:
    """When the certificate expires (UTC)."""
    cert = x509.load_pem_x509_certificate(pem)
    aware = getattr(cert, "not_valid_after_utc", None)  # cryptography < 42 only has the naive one
    return aware if aware is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
