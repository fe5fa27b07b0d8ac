"""The emulator's certificate authority: a CA, server certificates it signs, and what they say.

The product never makes a CA or a server certificate; the emulator and the tests do, to stand in
for a Central Node over real mutual TLS. Built on `kata_events.certs.make_cert`.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Iterable

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kata_events.certs import KeyAndCert, days_from_now, make_cert


def make_ca(
    common_name: str = "kata-events emulator CA", days: int = 3650, key_type: str = "ec"
) -> KeyAndCert:
    """A self-signed certificate authority able to sign server certificates."""
    # KeyUsage's flags in order: only digital_signature, key_cert_sign and crl_sign are set.
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    extensions = [x509.BasicConstraints(ca=True, path_length=0), usage]
    return make_cert(common_name, key_type, days_from_now(days), extensions)


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
    """A TLS server certificate signed by ``ca``, valid for ``hostnames`` (DNS names or IP addresses)
    for ``days`` but never longer than ``ca``."""
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
    not_after = min(days_from_now(days), cert_not_after(ca.cert_pem))
    return make_cert(names[0], key_type, not_after, extensions, ca)


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
