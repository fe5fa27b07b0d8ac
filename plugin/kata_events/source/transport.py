"""The HTTP transport under the API client: TLS settings, a requests `Session` and its adapter.

The server is verified by the first of these that is set (`choose_trust`): ``pin_sha256`` (its
certificate's SHA-256, checked by urllib3's ``assert_fingerprint`` after the handshake and before
the request goes out, through a proxy's CONNECT tunnel too), ``ca_file``, the ``REQUESTS_CA_BUNDLE``
/ ``CURL_CA_BUNDLE`` variables (the convention of requests and curl), and otherwise the system's
trust store (OpenSSL's, with ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured; not certifi's bundle,
so a CA installed on the box keeps working). ``insecure`` verifies nothing. TLS 1.2 is the least
version accepted, whatever the local OpenSSL would allow. An encrypted key is opened with
`kata_events.key_password`, never prompted for.

The adapter puts these settings on every connection instead of requests' own (certifi's bundle,
``verify``), with TCP keepalive through the socket options. Its connection pools tell the client
which connection carries the request, so that another thread can shut it down (a stop during a long
poll, a deadline). Proxies are chosen here: the ``proxy`` option, else ``HTTPS_PROXY`` /
``ALL_PROXY`` with ``NO_PROXY`` as requests reads them. For messages only, outside a request: the
server certificate's SHA-256 (a handshake without verification) and whether an address answers
plain HTTP (a wrong port). This module never logs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from kata_events.config import Config
from kata_events.exits import UserError
from kata_events.key_password import KeyPassword, pair_problem
from kata_events.source.errors import ClientTlsError, TlsVerifyFailed

#: A peer gone silently (power loss, a NAT that forgot the connection) shows as an error within
#: about two minutes instead of after a long poll's hour. Linux names; other systems keep defaults.
KEEPALIVE_OPTIONS: List[Tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] + [
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))
    if hasattr(socket, name)
]

# insecure = true is warned about once per start, in the log; urllib3 would warn per request, in
# Python's words, on stderr outside the log format.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


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


def choose_trust(config: Config, environ: Mapping[str, str] = os.environ) -> Trust:
    """The trust in force: an explicit pin or ca_file always wins over the environment."""
    if config.pin_sha256:
        return Trust("pin_sha256", pin=config.pin_sha256)
    if config.insecure:
        return Trust("insecure")
    if config.ca_file:
        return Trust("ca_file", str(config.ca_file))
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
                pair_problem(cert, key, key_password)
                or f"cannot use the client certificate {cert} / key {key}: {exc}"
            ) from None
    return ctx


#: Told of each connection as it is taken for a request (``False``) and once connected (``True``).
Watch = Callable[[urllib3.connection.HTTPConnection, bool], None]


def proxy_for(url: str, proxy: Optional[str]) -> Optional[str]:
    """The proxy a request to ``url`` goes through: the option, else the environment's (or None)."""
    return proxy or requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url)) or None


class Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with our SSL context, pin and socket options on every connection pool;
    mounted on a session with ``trust_env`` off (no .netrc, no CA variables behind our back: proxies
    are read once, by `proxy_for`)."""

    def __init__(self, ssl_context: ssl.SSLContext, pin_sha256: Optional[str], watch: Watch) -> None:
        self._pool_kw: Dict[str, Any] = {
            "ssl_context": ssl_context,
            "assert_fingerprint": pin_sha256,
            "socket_options": urllib3.connection.HTTPConnection.default_socket_options + KEEPALIVE_OPTIONS,
        }

        class Connection(urllib3.connection.HTTPSConnection):
            #: Through a proxy: whether it answered the CONNECT request with 200 (the tunnel is up).
            tunnel_up = False

            def connect(self) -> None:
                super().connect()
                watch(self, True)

            def _tunnel(self) -> None:
                self.tunnel_up = False
                super()._tunnel()  # type: ignore[misc]
                self.tunnel_up = True

        class Pool(urllib3.connectionpool.HTTPSConnectionPool):
            ConnectionCls = Connection

            def _get_conn(self, timeout: Optional[float] = None) -> Any:
                conn = super()._get_conn(timeout)
                watch(conn, False)
                return conn

        self._pool_class = Pool
        # No retries of urllib3's own: the client decides (another address, a backoff).
        super().__init__(pool_connections=4, pool_maxsize=1, max_retries=0)

    def _own_pools(self, manager: Any) -> Any:
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": self._pool_class}
        return manager

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **kw, **self._pool_kw)
        self._own_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy in self.proxy_manager:
            return self.proxy_manager[proxy]
        return self._own_pools(super().proxy_manager_for(proxy, **proxy_kwargs, **self._pool_kw))

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        # requests' verify and cert settings would replace or add to the context's: keep ours alone.
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host_params, {}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """The context on the pool decides trust (requests would load certifi's bundle into it)."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests' and urllib3's exceptions carry the original one inside."""
    seen = set()
    todo: List[Any] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, "reason", None), item.__cause__, item.__context__]
        todo += [arg for arg in item.args if isinstance(arg, BaseException)]


def root_reason(exc: BaseException) -> str:
    """The innermost error's words (``[Errno 111] Connection refused``), never a wrapper's: those
    of requests and urllib3 quote the request's URL, continuation token included."""
    wrappers = (requests.RequestException, urllib3.exceptions.MaxRetryError)
    inner = [e for e in causes(exc) if not isinstance(e, wrappers)]
    with_errno = [e for e in inner if isinstance(e, OSError) and e.strerror]
    if with_errno:
        return own_words(with_errno[-1])
    if any(isinstance(e, (socket.timeout, urllib3.exceptions.TimeoutError)) for e in inner):
        return "timed out"
    return own_words(inner[-1]) if inner else exc.__class__.__name__


def own_words(exc: BaseException) -> str:
    """The exception's own words (its class when it has none), cut to 300 characters."""
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:300] + "..."


def peer_certificate(sock: Any, ctx: ssl.SSLContext, host: str) -> bytes:
    """The DER certificate the server shows on ``sock`` (closed after); through an https:// proxy's
    tunnel (an SSLSocket), the Central Node's TLS inside the proxy's, as urllib3 does."""
    if isinstance(sock, ssl.SSLSocket):
        from urllib3.util.ssltransport import SSLTransport

        with sock, SSLTransport(sock, ctx, server_hostname=host) as inner:
            return inner.getpeercert(binary_form=True) or b""
    with sock, ctx.wrap_socket(sock, server_hostname=host) as conn:
        return conn.getpeercert(binary_form=True) or b""


def probe_server_fingerprint(
    base_url: str,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    key_password: Optional[KeyPassword] = None,
    sock: Any = None,
) -> Optional[str]:
    """Handshake without verification only to read the server certificate's SHA-256, for a message.
    ``sock``: a connection already open to the server (through a proxy's tunnel, say); it is closed."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    try:
        ctx = context(Trust("insecure"), cert, key, key_password)
    except ClientTlsError:
        ctx = context(Trust("insecure"))
    try:
        raw = sock if sock is not None else socket.create_connection((host, parts.port or 443), 5.0)
        der = peer_certificate(raw, ctx, host)
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
