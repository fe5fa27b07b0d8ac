"""TLS settings of every connection to the Central Node: which trust verifies it, and our certificate.

The server is verified by the first of these that is set: ``pin_sha256`` (its certificate's SHA-256,
checked by urllib3 after the handshake and before the request goes out), ``ca_file``, the
``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` variables (the convention of requests and curl), and
otherwise the system's trust store (OpenSSL's, with ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
honoured; not certifi's bundle, so a CA installed on the box keeps working). ``insecure`` verifies
nothing. TLS 1.2 is the least version accepted, whatever the local OpenSSL would allow. An encrypted
key is opened with `kata_events.key_password`, never prompted for. This module never logs and never
touches the network.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional

from kata_events import keypair
from kata_events.exits import UserError
from kata_events.source.errors import ClientTlsError, TlsVerifyFailed

if TYPE_CHECKING:
    from kata_events.key_password import KeyPassword


@dataclass(frozen=True)
class Trust:
    """What verifies the server: ``kind`` is pin_sha256, ca_file, a CA_BUNDLE variable, system or
    insecure; ``path`` the CA file or bundle, ``pin`` the fingerprint (lowercase hex)."""

    kind: str
    path: Optional[str] = None
    pin: Optional[str] = None

    @property
    def text(self) -> str:
        """For the start log and messages: what verified the server."""
        fixed = {"insecure": "nothing (insecure = true)", "system": "the system's trust store"}
        return fixed.get(self.kind, f"{self.kind} {self.pin or self.path}")


def choose_trust(
    ca_file: Optional[str], pin_sha256: Optional[str], insecure: bool, environ: Mapping[str, str]
) -> Trust:
    """The trust in force: an explicit pin or ca_file always wins over the environment."""
    if pin_sha256:
        return Trust("pin_sha256", pin=pin_sha256)
    if insecure:
        return Trust("insecure")
    if ca_file:
        return Trust("ca_file", ca_file)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # as requests and curl read them
        if environ.get(name):
            return Trust(name, environ[name])
    return Trust("system")


def context(
    trust: Trust,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    key_password: Optional[KeyPassword] = None,
) -> ssl.SSLContext:
    """A client context for ``trust``, with our certificate when ``cert`` and ``key`` are given.

    Raises `TlsVerifyFailed` when the CA file or bundle is unusable, `ClientTlsError` when our
    certificate or key (or its passphrase) is."""
    if trust.kind in ("pin_sha256", "insecure"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        where = "capath" if trust.path and os.path.isdir(trust.path) else "cafile"
        try:
            ctx = ssl.create_default_context(**{where: trust.path})
        except (OSError, ssl.SSLError) as exc:
            what = "CA file" if trust.kind == "ca_file" else f"CA bundle {trust.kind}"
            raise TlsVerifyFailed(
                f"the {what} {trust.path} holds no usable PEM certificate ({exc})"
            ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if ctx.post_handshake_auth is not None:
        ctx.post_handshake_auth = True  # a server may ask for the client certificate after the handshake
    if cert and key:
        try:
            # Never None: OpenSSL would prompt on the terminal for an encrypted key's passphrase.
            password = key_password() if key_password is not None else b""
            ctx.load_cert_chain(cert, key, password=password)
        except UserError as exc:
            raise ClientTlsError(str(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            raise ClientTlsError(
                keypair.problem(cert, key, key_password)
                or f"cannot use the client certificate {cert} / key {key}: {exc}"
            ) from None
    return ctx
