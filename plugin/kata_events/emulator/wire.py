"""The emulator's connections: the standard library's threading HTTP server, TLS on each thread.

`_Server` accepts (its accept loop never does a TLS handshake: a connection's own thread does) and
keeps every connection and thread in the emulator's sets, so that a stop reaches them all; `_Handler`
reads each request with `BaseHTTPRequestHandler` and hands it to `Emulator._dispatch`.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Optional, Tuple

from kata_events import certs
from kata_events.emulator.answering import _Request

if TYPE_CHECKING:
    from kata_events.emulator.server import Emulator

log = logging.getLogger("kata_events.emulator")

HANDSHAKE_TIMEOUT = 10.0
MAX_HEADER_BYTES = 65536
MAX_CONTROL_BODY = 1 << 20
#: A request line longer than MAX_HEADER_BYTES is read (and dropped) up to this much, then gets 414.
MAX_DRAINED_REQUEST = 64 << 20


class _Server(ThreadingHTTPServer):
    """The standard library's threading HTTP server, with TLS done on each connection's thread.

    Keeps the open connections and their threads in the `Emulator`'s sets, so that a stop can shut
    every one down at once (a long poll, a hung or trickling answer) and join the threads.
    """

    daemon_threads = True
    block_on_close = False  # `Emulator.stop` joins the threads, with a deadline
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, emulator: Emulator, address: Tuple[str, int]) -> None:
        self.emulator = emulator
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own would look the host up in the DNS (getfqdn): a loopback server needs not.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"emulator-conn-{client_address[1]}",
            daemon=True,
        )
        with self.emulator._lock:
            self.emulator._raw_connections.add(request)
            self.emulator._threads.add(thread)
        thread.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake, then the handler's requests on the connection, then its close."""
        emulator = self.emulator
        conn: Optional[ssl.SSLSocket] = None
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert emulator._ssl_context is not None
            try:
                conn = emulator._ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            with emulator._lock:
                emulator._raw_connections.discard(request)
                emulator._connections.add(conn)
            if emulator._stopping.is_set():
                return
            conn.settimeout(emulator.idle_timeout)
            _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.debug("connection from %s ended: %s", client_address, exc)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
                with emulator._lock:
                    emulator._connections.discard(conn)

    def shutdown_request(self, request: Any) -> None:
        try:
            request.close()
        except OSError:
            pass
        with self.emulator._lock:
            self.emulator._raw_connections.discard(request)
            self.emulator._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests, read with the standard library and answered by the `Emulator`."""

    protocol_version = "HTTP/1.1"
    server_version = "kata-events-emulator"
    sys_version = ""
    rbufsize = 65536
    server: _Server

    def setup(self) -> None:
        super().setup()
        der = self.connection.getpeercert(binary_form=True)
        self.fingerprint = certs.sha256_fingerprint(der) if der else None

    def handle(self) -> None:
        """Requests one after the other while the connection is kept alive and no stop is asked."""
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and not self.server.emulator._stopping.is_set():
            self.handle_one_request()

    def handle_one_request(self) -> None:
        request = self._read_request()
        if request is None:
            self.close_connection = True
            return
        if not self.server.emulator._dispatch(self, request, self.fingerprint):
            self.close_connection = True

    def _read_request(self) -> Optional[_Request]:
        """The next request (None when the client left or it cannot be answered)."""
        line = self.rfile.readline(MAX_HEADER_BYTES)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_HEADER_BYTES)
        if not line:
            return None
        if len(line) >= MAX_HEADER_BYTES and not line.endswith(b"\n"):
            # Like nginx or Apache: read the rest of the request and answer 414 (the client then
            # sees the status, not a connection reset in the middle of its send).
            drained = len(line)
            while not line.endswith(b"\n") and drained < MAX_DRAINED_REQUEST:
                line = self.rfile.readline(1 << 20)
                if not line:
                    return None
                drained += len(line)
            while line not in (b"\r\n", b"\n", b"") and drained < MAX_DRAINED_REQUEST:
                line = self.rfile.readline(MAX_HEADER_BYTES)
                drained += len(line)
            self.request_version, self.requestline, self.command = "HTTP/1.1", "", ""
            return _Request("TOO_LONG", "", "HTTP/1.1", {"connection": "close"}, b"")
        self.raw_requestline = line
        if not self.parse_request():  # it answered the error itself
            return None
        headers = {name.lower(): value for name, value in self.headers.items()}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("chunked request bodies are not supported")
        length = int(headers.get("content-length", "0") or 0)
        if length < 0 or length > MAX_CONTROL_BODY:
            raise ValueError("request body too large")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            return None
        return _Request(self.command.upper(), self.path, self.request_version, headers, body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)
