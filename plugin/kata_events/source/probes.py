"""What kata-events learns about a Central Node's address outside a request, for a message: the
SHA-256 of our certificate file and of the server's (read by a handshake without verification), and
whether the address answers plain HTTP (a wrong port). It never writes to stdout and never logs."""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any, Optional
from urllib.parse import urlsplit

from kata_events.source import tls
from kata_events.source.errors import ClientTlsError


def file_fingerprint(cert_path: str) -> Optional[str]:
    """SHA-256 (hex) of the first certificate in a PEM file, or None if it cannot be read."""
    from kata_events import certs  # cryptography: loaded only when a message needs it

    try:
        with open(cert_path, "rb") as fh:
            return certs.sha256_fingerprint(fh.read())
    except (OSError, ValueError):
        return None


def probe_server_fingerprint(
    base_url: str,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    sock: Any = None,
    key_password: Any = None,
) -> Optional[str]:
    """Handshake without verification only to read the server certificate's SHA-256, for a message.
    ``sock``: a connection already open to the server (through a proxy's tunnel, say); it is closed."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        ctx = tls.context(tls.Trust("insecure"), cert, key, key_password)
    except ClientTlsError:
        ctx = tls.context(tls.Trust("insecure"))
    try:
        raw = sock if sock is not None else socket.create_connection((host, port), timeout=5.0)
        if isinstance(raw, ssl.SSLSocket):  # a tunnel through an https:// proxy: TLS inside TLS
            from urllib3.util.ssltransport import SSLTransport

            with raw, SSLTransport(raw, ctx, server_hostname=host) as inner:
                der = inner.getpeercert(binary_form=True)
        else:
            with raw, ctx.wrap_socket(raw, server_hostname=host) as conn:
                der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def handshake_failure(base_url: str, reason: str) -> str:
    """The message for a TLS handshake that failed for another reason than trust or our own files.

    Whether the address answers a plain HTTP request tells "wrong port" apart from other TLS
    failures, whatever words the local OpenSSL uses for it (``WRONG_VERSION_NUMBER`` and others).
    """
    parts = urlsplit(base_url)
    request = f"HEAD / HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode("ascii", "replace")
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=3.0) as raw:
            raw.sendall(request)
            reply = raw.recv(5)
    except (OSError, UnicodeError):
        reply = b""
    if reply == b"HTTP/":
        return (
            f"{parts.hostname} port {parts.port or 443} answers plain HTTP, not TLS: check the port "
            f"in url ({base_url}); the Events API speaks HTTPS with mutual TLS"
        )
    return f"TLS handshake with {base_url} failed: {reason}"
