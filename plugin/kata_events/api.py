"""The Events API client: one keep-alive HTTPS session with mutual TLS, pages streamed as raw events.

It builds requests the way the Central Node expects (``max_events`` and ``max_timeout`` always,
``filter`` only when creating a subscription, ``continuation_token`` once there is one), verifies
the server (system CAs, a CA file, or a pinned certificate), tries several base URLs in turn on
connection failure, and translates every `requests`/`urllib3`/`ssl`/`OSError` failure into the
project's own exceptions (`kata_events.errors`). It never writes to stdout and never logs.
"""

from __future__ import annotations

import hashlib
import queue
import socket
import ssl
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from kata_events.errors import (
    BadRequest,
    BadResponse,
    ClientTlsError,
    SubscriptionLost,
    TlsVerifyFailed,
    TokenRefused,
    Unauthorized,
    Unavailable,
)
from kata_events.stream import DEFAULT_MAX_EVENT_BYTES, MalformedBody, PageSplitter, SkippedEvent
from kata_events.tokens import token_problem

API_PATH = "/kata/events_api/v1/{external_system_id}/events"
#: Large reads keep Python's per-chunk work small next to the bytes moved.
CHUNK_SIZE = 1 << 20
CONNECT_TIMEOUT = 10.0
#: The server may hold a long poll for ``max_timeout``; allow this much more before giving up.
READ_TIMEOUT_MARGIN = 10.0
#: How much of an error body is read, and how much of it is quoted in a message.
ERROR_BODY_LIMIT = 65536
EXCERPT_CHARS = 200


def excerpt(data: bytes, limit: int = EXCERPT_CHARS) -> str:
    """A short printable excerpt of a body for a log line."""
    text = data[: limit * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def file_fingerprint(cert_path: str) -> Optional[str]:
    """SHA-256 (hex) of the first certificate in a PEM file, or None if it cannot be read."""
    from kata_events import certs  # cryptography: loaded only when a message needs it

    try:
        with open(cert_path, "rb") as fh:
            return certs.sha256_fingerprint(fh.read())
    except (OSError, ValueError):
        return None


def probe_server_fingerprint(base_url: str, cert: str, key: str, timeout: float = 5.0) -> Optional[str]:
    """Connect without verification only to read the server certificate's SHA-256 for a message."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError):
        pass
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(
            raw, server_hostname=host
        ) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def answers_plain_http(base_url: str, timeout: float = 3.0) -> bool:
    """Whether the address answers a plain HTTP request: what a failed TLS handshake there means.

    Only asked after a handshake failed, to tell "wrong port" apart from other TLS failures
    whatever words the local OpenSSL uses for it (``WRONG_VERSION_NUMBER`` and others).
    """
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or 443
    request = f"HEAD / HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode("ascii", "replace")
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            raw.sendall(request)
            reply = raw.recv(5)
    except (OSError, UnicodeError):
        return False
    return reply == b"HTTP/"


def handshake_failure(base_url: str, reason: str) -> str:
    """The message for a TLS handshake that failed for another reason than trust or our own files."""
    if answers_plain_http(base_url):
        parts = urlsplit(base_url)
        return (
            f"{parts.hostname} port {parts.port or 443} answers plain HTTP, not TLS: check the port "
            f"in url ({base_url}); the Events API speaks HTTPS with mutual TLS"
        )
    return f"TLS handshake with {base_url} failed: {reason}"


class _PinnedAdapter(HTTPAdapter):
    """Checks the server certificate's SHA-256 instead of a CA chain (self-signed Central Nodes)."""

    def __init__(self, pin_sha256: str) -> None:
        self._pin = pin_sha256
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._pin
        super().init_poolmanager(*args, **kwargs)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _ReadAhead:
    """Reads and splits a body in a thread, a few chunks ahead of the caller.

    The caller writes and hashes the previous chunk's events (without the GIL, in C) while this
    thread reads the next one (socket and TLS work, also without the GIL) and splits it: the three
    overlap on two cores instead of running one after the other, and the server's sending never
    waits on our splitting. At most ``depth`` items wait in the queue: ``(events, skipped)`` per
    chunk, then ``None`` at the end of the body. A failure (the connection's, or the splitter's
    `MalformedBody`) is handed over and raised by ``get``.
    """

    def __init__(self, raw: Any, splitter: PageSplitter, depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._closed = threading.Event()
        self._splitter = splitter
        #: Bytes of the body read so far.
        self.bytes_read = 0
        #: Set once the reading thread has stopped reading (end of body, or a failure).
        self.done = threading.Event()
        threading.Thread(target=self._read, args=(raw,), name="page-reader", daemon=True).start()

    def _read(self, raw: Any) -> None:
        splitter = self._splitter
        try:
            while not self._closed.is_set():
                chunk = raw.read(CHUNK_SIZE, decode_content=True)
                if not chunk:
                    self.done.set()
                    self._put(None)
                    return
                self.bytes_read += len(chunk)
                events = splitter.feed(chunk)
                skipped, splitter.skipped = splitter.skipped, []
                if events or skipped:
                    self._put((events, skipped))
        except BaseException as exc:  # handed to the caller's thread, which decides
            self.done.set()
            self._put(exc)
        finally:
            self.done.set()

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self) -> Optional[Tuple[List[bytes], List[SkippedEvent]]]:
        """The next chunk's events and skipped events (None at the end); raises what failed."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()


class Page:
    """One streamed response: iterate `batches()` for raw event lines, then `finish()` for the token."""

    def __init__(
        self, response: requests.Response, base_url: str, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        self._response = response
        self.base_url = base_url
        self._splitter = PageSplitter(max_event_bytes)
        self._reader: Optional[_ReadAhead] = None
        self._skipped: List[SkippedEvent] = []

    @property
    def bytes_read(self) -> int:
        """Bytes of the body read so far (a few chunks ahead of the events handed back)."""
        return self._reader.bytes_read if self._reader is not None else 0

    @property
    def event_count(self) -> int:
        """Events split so far: all of the page's once `batches` is exhausted."""
        return self._splitter.event_count

    @property
    def element_count(self) -> int:
        """Elements of the page's ``events`` so far: the events handed back and those skipped."""
        return self._splitter.event_count + self._skipped_total

    _skipped_total = 0

    def take_skipped(self) -> List[SkippedEvent]:
        """Events skipped since the last call (too large, nested too deep), for the caller to report."""
        skipped, self._skipped = self._skipped, []
        self._skipped_total += len(skipped)
        return skipped

    def batches(self) -> Iterator[List[bytes]]:
        """Events as they arrive, a list per network chunk; each item is one line without newline."""
        self._reader = _ReadAhead(self._response.raw, self._splitter)
        try:
            while True:
                item = self._reader.get()
                if item is None:
                    break
                events, skipped = item
                self._skipped += skipped
                if events:
                    yield events
        except MalformedBody as exc:
            raise BadResponse(f"the page is not valid JSON: {exc}", exc.excerpt) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(
                f"the connection broke after {self.bytes_read} bytes of the page: {_reason(exc)}"
            ) from None

    def finish(self) -> str:
        """The page's continuation token, once the whole body was read and checked."""
        try:
            skeleton = self._splitter.close()
        except MalformedBody as exc:
            raise BadResponse(f"the page is incomplete or not valid JSON: {exc}", exc.excerpt) from None
        token = skeleton.get("continuationToken")
        if not isinstance(token, str) or not token:
            problem = "no continuationToken" if token is None else "continuationToken is not a string"
            raise BadResponse(
                f"the page does not look like an Events API response ({problem})",
                excerpt(repr(skeleton).encode()),
            )
        problem = token_problem(token)
        if problem:
            # Saved, it would make every later request fail, across restarts too.
            raise BadResponse(
                f"the page's continuationToken is not one a server would send: {problem}",
                excerpt(token.encode("utf-8", "replace"), 60),
            )
        return token

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            if not self._reader.done.is_set():
                # The reading thread is inside a read, holding the response's buffer: closing the
                # response would wait for the server's next byte (for ever, if it trickles). Shut
                # the socket down first, so that read returns at once (a stop, a deadline).
                _shutdown(self._response)
        self._response.close()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(response: requests.Response) -> None:
    """Shut down the socket under a streamed response (from any thread); errors are ignored."""
    connection = getattr(response.raw, "_connection", None) or getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        # socket.socket's own shutdown: an SSLSocket's would drop its TLS object under the reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _reason(exc: BaseException) -> str:
    """The innermost useful text of a requests/urllib3 exception chain."""
    seen = exc
    while True:
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        inner = inner or getattr(seen, "reason", None)
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen) or seen.__class__.__name__
    return text if len(text) <= 300 else text[:300] + "..."


class EventsClient:
    """Speaks to one Central Node (possibly through several addresses) for one external system."""

    def __init__(
        self,
        *,
        urls: Sequence[str],
        external_system_id: str,
        cert: str,
        key: str,
        ca_file: Optional[str] = None,
        pin_sha256: Optional[str] = None,
        insecure: bool = False,
        max_events: int = 10000,
        max_timeout: int = 60,
        filter: str = "",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.external_system_id = external_system_id
        self.cert, self.key = cert, key
        self.max_events = max_events
        self.max_timeout = max_timeout
        self.filter = filter
        self.max_event_bytes = max_event_bytes
        self._current = 0
        session = requests.Session()
        session.cert = (cert, key)
        # Passed with every request, not set on the session: requests lets REQUESTS_CA_BUNDLE and
        # CURL_CA_BUNDLE override a session-level CA file, which would silently ignore ca_file.
        self._verify: Union[bool, str]
        if pin_sha256:
            self._verify = False
            session.mount("https://", _PinnedAdapter(pin_sha256))
        elif insecure:
            self._verify = False
            # urllib3 would print a plain-text warning on stderr for every request, breaking the
            # JSON log lines; the `insecure` log event says it once per start instead.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        else:
            self._verify = ca_file or True
        self._session = session

    @property
    def url(self) -> str:
        """The base URL currently in use."""
        return self.urls[self._current]

    def params(self, token: Optional[str], max_timeout: Optional[int] = None) -> Dict[str, str]:
        """Query parameters of the next request."""
        params = {
            "max_events": str(self.max_events),
            "max_timeout": f"PT{int(max_timeout or self.max_timeout)}S",
        }
        if token:
            params["continuation_token"] = token
        elif self.filter:
            params["filter"] = self.filter
        return params

    def fetch(self, token: Optional[str], max_timeout: Optional[int] = None) -> Page:
        """Send one request and return the page, still streaming; raises `ApiError` subclasses."""
        params = self.params(token, max_timeout)
        read_timeout = int(params["max_timeout"][2:-1]) + READ_TIMEOUT_MARGIN
        last_error: Optional[Exception] = None
        for attempt in range(len(self.urls)):
            base = self.urls[(self._current + attempt) % len(self.urls)]
            url = base + API_PATH.format(external_system_id=self.external_system_id)
            try:
                response = self._session.get(
                    url,
                    params=params,
                    stream=True,
                    verify=self._verify,
                    timeout=(CONNECT_TIMEOUT, read_timeout),
                )
            except requests.exceptions.SSLError as exc:
                raise self._tls_error(base, exc) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if isinstance(exc, requests.ReadTimeout):
                    raise Unavailable(
                        f"{base} did not answer within {read_timeout:.0f} s: {_reason(exc)}"
                    ) from None
                last_error = exc
                continue
            except (requests.RequestException, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
                    raise ClientTlsError(
                        f"cannot use the client certificate {self.cert} / key {self.key}: {exc}"
                    ) from None
                raise Unavailable(f"request to {base} failed: {_reason(exc)}") from None
            self._current = (self._current + attempt) % len(self.urls)
            return self._check_status(response, base, token)
        tried = ", ".join(self.urls)
        raise Unavailable(f"cannot connect to {tried}: {_reason(last_error) if last_error else 'no URL'}")

    def _check_status(self, response: requests.Response, base: str, token: Optional[str] = None) -> Page:
        status = response.status_code
        if status == 200:
            return Page(response, base, self.max_event_bytes)
        try:
            body = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            body = b""
        finally:
            response.close()
        text = excerpt(body)
        if status == 401:
            raise Unauthorized(f"HTTP 401 from {base}: {text}")
        if status == 404 and b"subscription not found" in body.lower():
            raise SubscriptionLost(f"HTTP 404 from {base}: {text}")
        if token and status in (400, 404, 414):
            raise TokenRefused(
                f"HTTP {status} from {base} for the request carrying the continuation token "
                f"({len(token)} characters): {text or 'empty body'}",
                status,
                text,
            )
        if status == 400:
            raise BadRequest(text or "HTTP 400 with an empty body")
        if status == 414:
            raise BadRequest(f"HTTP 414 (URI too long): {text or 'empty body'}; is the filter that long?")
        if status == 429 or status >= 500:
            raise Unavailable(
                f"HTTP {status} from {base}: {text}", _retry_after(response.headers.get("Retry-After"))
            )
        raise BadResponse(f"unexpected HTTP {status} from {base}", text)

    def _tls_error(self, base: str, exc: Exception) -> Exception:
        reason = _reason(exc)
        lowered = reason.lower()
        verify_words = (
            "certificate_verify_failed",
            "fingerprints did not match",
            "hostname",
            "doesn't match",
        )
        if any(w in lowered for w in verify_words):
            return TlsVerifyFailed(
                f"the server at {base} was not trusted: {reason}",
                probe_server_fingerprint(base, self.cert, self.key),
            )
        if "pem" in lowered or "key values mismatch" in lowered or "no such file" in lowered:
            from kata_events import keypair

            return ClientTlsError(
                keypair.problem(self.cert, self.key)
                or f"cannot use the client certificate {self.cert} / key {self.key}: {reason}"
            )
        return Unavailable(handshake_failure(base, reason))

    def close(self) -> None:
        self._session.close()

    def abort(self) -> None:
        """Close the connections from another thread, so a blocked long poll returns at once."""
        self._session.close()
