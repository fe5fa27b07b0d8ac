"""The HTTP transport under the API client: a requests `Session` and its adapter.

The adapter puts our TLS settings on every connection instead of requests' own (certifi's bundle,
``verify``): the SSL context of `kata_events.source.tls`, urllib3's ``assert_fingerprint`` for a pin
(checked after the handshake, before the request is sent, through a proxy's CONNECT tunnel too),
and TCP keepalive through the socket options. Its connection pools tell the client which
connection carries the request, so that another thread can shut it down (a stop during a long
poll, a deadline). Proxies are chosen here: the ``proxy`` option, else ``HTTPS_PROXY`` /
``ALL_PROXY`` with ``NO_PROXY`` as requests reads them. This module never logs.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import requests
import requests.adapters
import requests.utils
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

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

#: Told of each connection as it is taken for a request (``False``) and once connected (``True``).
Watch = Callable[[urllib3.connection.HTTPConnection, bool], None]


def proxy_for(url: str, proxy: Optional[str]) -> Optional[str]:
    """The proxy a request to ``url`` goes through: the option, else the environment's (or None)."""
    if proxy:
        return proxy
    return requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url)) or None


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with our SSL context, pin and socket options on every connection pool."""

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


def session(headers: Mapping[str, str]) -> requests.Session:
    """A session sending ``headers`` and nothing of the environment (no .netrc, no CA variables
    behind our back: proxies are read once, by `proxy_for`)."""
    session = requests.Session()
    session.trust_env = False
    session.headers.clear()
    session.headers.update(headers)
    return session


def mount(
    session: requests.Session, ssl_context: ssl.SSLContext, pin_sha256: Optional[str], watch: Watch
) -> None:
    """Use these TLS settings from the next connection on (the open ones are closed)."""
    old = session.adapters.get("https://")
    session.mount("https://", _Adapter(ssl_context, pin_sha256, watch))
    if old is not None:
        old.close()


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
        return _short(str(with_errno[-1]))
    if any(isinstance(e, (socket.timeout, urllib3.exceptions.TimeoutError)) for e in inner):
        return "timed out"
    return _short(str(inner[-1]) if inner else exc.__class__.__name__)


def own_words(exc: BaseException) -> str:
    """The exception's own words (its class when it has none), cut to 300 characters."""
    return _short(str(exc) or exc.__class__.__name__)


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:300] + "..."
