"""A loopback TCP proxy in front of the emulator that misbehaves the way a network can.

`LoopbackProxy` passes bytes both ways to ``target``. With ``connect=True`` it is an HTTP proxy
instead: each connection starts with ``CONNECT host:port``, answered ``200`` (then bytes pass both
ways to that host and port: TLS stays end to end), or ``407`` when ``credentials`` (``user:password``)
are required and missing, or ``403`` with ``refuse``; ``tunnels`` records each request's target and
``Proxy-Authorization`` header; ``answer`` makes it close without answering the CONNECT request,
or write a 403 without reading it; ``tls`` makes it an ``https://`` proxy (TLS to the proxy, and the
client's TLS to the server inside it). Two ways to misbehave, each on the first
connections only: ``trickled`` connections get a TLS record header and then one zero byte every
``gap`` seconds (a handshake that never ends; bounded to 10 minutes); with ``hold_after``, the first
proxied connection lets that many of the server's bytes through and holds the rest until
:meth:`LoopbackProxy.release`. Tests only; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from typing import List, Optional, Tuple


class LoopbackProxy:
    def __init__(
        self,
        target: Tuple[str, int],
        trickled: int = 0,
        gap: float = 1.0,
        hold_after: Optional[int] = None,
        connect: bool = False,
        credentials: Optional[str] = None,
        refuse: bool = False,
        answer: str = "",
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.target = target
        self.connect = connect
        #: ``"none"``: close each connection as soon as the CONNECT request is read, answering
        #: nothing; ``"403-unread"``: write a 403 as soon as a client connects, without reading;
        #: ``"cut"``: half a status line (``HTTP/1.1``), then close.
        self.answer = answer
        #: A server context: the proxy speaks TLS to its clients (an ``https://`` proxy).
        self.tls = tls
        self.credentials = credentials
        self.refuse = refuse
        #: CONNECT requests seen: (host:port, Proxy-Authorization header or None).
        self.tunnels: List[Tuple[str, Optional[str]]] = []
        self.trickled = trickled
        self.gap = gap
        self.hold_after = hold_after
        self.connections = 0
        #: The server's bytes passed on the held connection, and whether it now holds.
        self.passed = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: List[threading.Thread] = []
        self._start(self._accept)

    @property
    def url(self) -> str:
        """Where a client goes instead of the emulator (or, with ``connect``, the proxy's URL)."""
        if self.connect:
            auth = f"{self.credentials}@" if self.credentials else ""
            return f"{'https' if self.tls else 'http'}://{auth}127.0.0.1:{self.port}"
        return f"https://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Let the held connection's remaining bytes through."""
        self._released.set()

    def close(self) -> None:
        self._stop.set()
        self._released.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(3)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.trickled:
                self._start(self._trickle, conn)
                continue
            if self.connect:
                self._start(self._tunnel, conn)
                continue
            upstream = socket.create_connection(self.target, timeout=10)
            held = self.hold_after is not None and self.connections == self.trickled + 1
            self._start(self._pipe, conn, upstream, False)
            self._start(self._pipe, upstream, conn, held)

    def _tunnel(self, conn: socket.socket) -> None:
        """Read a CONNECT request; answer it and, when allowed, pass bytes to the host it names."""
        import base64

        conn.settimeout(10)
        head = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ValueError):
                conn.close()
                return
        if self.answer == "cut":
            # Half a status line, then the connection closes: a proxy that died mid-answer.
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1")
            except OSError:
                pass
            conn.close()
            return
        if self.answer == "403-unread":
            # Answered at once; the request arrives after and stays unread: the close resets it.
            try:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            conn.close()
            return
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    raise OSError("closed before the request ended")
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            auth = next((v.strip() for k, v in headers.items() if k.lower() == "proxy-authorization"), None)
            self.tunnels.append((target, auth))
            if self.answer == "none":
                conn.close()
                return
            wanted = (
                "Basic " + base64.b64encode(self.credentials.encode()).decode() if self.credentials else None
            )
            if method != "CONNECT" or self.refuse:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                return
            if wanted is not None and auth != wanted:
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
                conn.close()
                return
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        except (OSError, ValueError):
            conn.close()
            return
        if self.tls is not None:
            self._start(self._relay, conn, upstream)
            return
        self._start(self._pipe, conn, upstream, False)
        self._start(self._pipe, upstream, conn, False)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        """Bytes both ways on one thread: a TLS socket is not read and written from two at once."""
        a.settimeout(0.5)
        b.settimeout(0.5)
        other = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
                ready = ready or select.select([a, b], [], [], 0.5)[0]
                for src in ready:
                    try:
                        data = src.recv(65536)
                    except (socket.timeout, ssl.SSLWantReadError):
                        continue
                    if not data:
                        return
                    other[src].sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)  # the ClientHello
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record begins...
                for _ in range(600):  # ... and never ends (bounded: 10 min at most)
                    if self._stop.wait(self.gap):
                        return
                    conn.sendall(b"\x00")
            except OSError:
                return

    def _pipe(self, src: socket.socket, dst: socket.socket, held: bool) -> None:
        src.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if held and not self._released.is_set():
                    data = self._hold(data, dst)
                    if data is None:
                        return
                if held:
                    self.passed += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _hold(self, data: bytes, dst: socket.socket) -> Optional[bytes]:
        """Pass ``data`` up to the hold point, wait for release; what is left, or None on close."""
        assert self.hold_after is not None
        room = self.hold_after - self.passed
        if len(data) < room:
            return data
        dst.sendall(data[:room])
        self.passed += room
        self.holding.set()
        while not self._released.wait(0.2):
            if self._stop.is_set():
                return None
        return data[room:]
