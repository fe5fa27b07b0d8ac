"""Make a server ``ssl.SSLContext`` accept any client certificate, the way a Central Node does.

A Central Node asks every client for a certificate but trusts none of them by chain: it takes whatever
certificate is presented (self-signed ones nobody issued included), and an administrator's approval
then ties that certificate's fingerprint to an external system id. Python's ``ssl`` module cannot say
"request a certificate but do not verify it": ``CERT_OPTIONAL`` still verifies, and fails the
handshake when the chain is unknown; ``CERT_NONE`` never asks. OpenSSL can do it (a verify callback
that always says yes) but Python does not expose the callback.

So this module reaches OpenSSL directly through ``ctypes``, without extra dependencies:

- the ``SSL_CTX*`` of an ``ssl.SSLContext`` is the first field after the object header of CPython's
  ``PySSLContext`` struct, i.e. at ``id(ctx) + object.__basicsize__``;
- ``SSL_CTX_set_verify`` is looked up through the ``_ssl`` extension module (``dlsym`` on its handle
  also searches its dependency, the very libssl Python is using -- never load another copy).

Before touching anything it checks the pointer by asking OpenSSL for the verify mode and comparing it
with what Python reports, and it fails with :class:`AnyClientCertError` (a clear message) when a
symbol is missing or the layout does not match. It never changes anything but the verify callback.
"""

from __future__ import annotations

import ctypes
import ssl
from typing import Any, Callable, Tuple

__all__ = ["AnyClientCertError", "accept_any_client_certificate"]

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02

_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _always_ok(preverify_ok: int, x509_store_ctx: int) -> int:
    return 1


# One callback object for the whole process: OpenSSL keeps only the raw pointer, so the Python
# object must outlive every context that uses it.
_CALLBACK = _VERIFY_CALLBACK(_always_ok)


class AnyClientCertError(RuntimeError):
    """This Python's ``ssl``/OpenSSL cannot be made to accept unverified client certificates."""


def _libssl_functions() -> Tuple[Callable[..., Any], Callable[..., Any]]:
    import _ssl

    candidates = []
    path = getattr(_ssl, "__file__", None)
    if path:
        candidates.append(path)
    candidates.append(None)  # statically linked builds: the symbols live in the interpreter itself
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            set_verify = lib.SSL_CTX_set_verify
            get_verify_mode = lib.SSL_CTX_get_verify_mode
        except (OSError, AttributeError):
            continue
        set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        set_verify.restype = None
        get_verify_mode.argtypes = [ctypes.c_void_p]
        get_verify_mode.restype = ctypes.c_int
        return set_verify, get_verify_mode
    raise AnyClientCertError(
        "cannot find SSL_CTX_set_verify in the OpenSSL library used by Python's ssl module "
        f"({path or 'unknown'}); the emulator needs it to accept self-signed client certificates"
    )


def accept_any_client_certificate(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make the server context ``ctx`` request a client certificate and accept any one presented.

    A client without a certificate still completes the handshake. After the handshake,
    ``getpeercert(binary_form=True)`` returns the client's DER certificate (or ``None``).
    Do not set ``ctx.verify_mode`` afterwards: that would reinstall OpenSSL's own verification.
    """
    set_verify, get_verify_mode = _libssl_functions()
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx:
        raise AnyClientCertError("unexpected ssl.SSLContext layout: no SSL_CTX pointer found")
    # Cross-check the pointer before writing through it: flip Python's mode and watch OpenSSL's
    # follow. A wrong pointer would read garbage here rather than both expected values.
    ctx.verify_mode = ssl.CERT_REQUIRED
    required = get_verify_mode(ssl_ctx)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    optional = get_verify_mode(ssl_ctx)
    if (required, optional) != (_SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT, _SSL_VERIFY_PEER):
        raise AnyClientCertError("unexpected ssl.SSLContext layout: the SSL_CTX pointer does not match")
    set_verify(ssl_ctx, _SSL_VERIFY_PEER, _CALLBACK)
    return ctx
