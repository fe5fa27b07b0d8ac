"""The Events API client: pages over one kept-alive mutual-TLS connection, streamed as raw events.

It sends ``max_events`` and ``max_timeout`` always, ``filter`` only when creating a subscription,
``continuation_token`` once there is one; tries several base URLs in turn on connection failure; and
translates every requests/urllib3/`ssl`/`OSError` failure into the project's own exceptions
(`errors`), here and only here. The body is streamed by `pages.Page`. It never writes to stdout and
never logs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import ssl
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import requests
import urllib3.exceptions

from kata_events import __version__, key_password
from kata_events.backoff import retry_after_seconds
from kata_events.config import Config, without_credentials
from kata_events.source import errors, pages, transport
from kata_events.source.pages import Page
from kata_events.source.transport import handshake_failure, probe_server_fingerprint
from kata_events.stopping import Stop

API_PATH = "/kata/events_api/v1/{external_system_id}/events"
CONNECT_TIMEOUT = 10.0
#: The server may hold a long poll for ``max_timeout``; allow this much more before giving up.
READ_TIMEOUT_MARGIN = 10.0
#: A network wait may outlast its socket timeouts by this much before it is abandoned (the per-read
#: timeouts fire first when they apply, with their own message). Per-read timeouts do not bound a
#: request whose server trickles a byte every few seconds: this overall limit does.
DEADLINE_SLACK = 5.0
#: How much of an error body is read, and how much of it is quoted in a message.
ERROR_BODY_LIMIT = 65536
#: urllib3's words for a certificate that is not the pinned one, and the fingerprint it saw.
_PIN_MISMATCH = re.compile(r"Fingerprints did not match.*got \W*([0-9a-fA-F]{64})", re.DOTALL)


class _Unreachable(errors.ApiError):
    """This address could not be reached or did not answer: the next one is tried (``answered`` as
    in `Unavailable`). It never leaves the client."""

    answered = False


class _Requester:
    """The ``request`` thread: sends the client's requests one at a time and hands each answer
    over in its box. One thread for the whole run (each thread that allocates costs the process a
    malloc arena); a new one only replaces it while a given-up request is still unwinding."""

    def __init__(self) -> None:
        self.busy = False
        self._inbox: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._run, name="request", daemon=True).start()

    def send(self, call: Callable[[], Page], box: queue.Queue[Any], given_up: threading.Event) -> None:
        self.busy = True
        self._inbox.put((call, box, given_up))

    def retire(self) -> None:
        self._inbox.put(None)  # the thread ends once the request it may be in returns

    def _run(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            call, box, given_up = job
            try:
                result: Any = call()
            except BaseException as exc:  # handed to the waiting thread, which decides
                result = exc
            self.busy = False
            box.put(result)
            if given_up.is_set() and isinstance(result, Page):
                result.close()  # nobody will read it


class EventsClient:
    """Speaks to one Central Node (possibly through several addresses) for one external system."""

    def __init__(
        self,
        config: Config,
        stop: Optional[Stop] = None,
        urls: Optional[Sequence[str]] = None,
        max_events: Optional[int] = None,
        max_timeout: Optional[int] = None,
    ) -> None:
        """For a resolved configuration; ``urls``, ``max_events`` and ``max_timeout`` replace its own
        (check's one request); ``stop`` ends a wait for an answer or a body early."""
        self.urls = [u.rstrip("/") for u in urls or config.url]
        self.external_system_id, self.filter = config.external_system_id, config.filter
        self.cert, self.key = str(config.cert), str(config.key)
        #: Opens an encrypted key (a `kata_events.key_password.KeyPassword`), or None.
        self.key_password = key_password.configured(config)
        #: What verifies the server (pin > ca_file > REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE > system).
        self.trust = transport.choose_trust(config)
        #: The proxy each base URL is reached through (None: directly).
        self.proxies = {u: transport.proxy_for(u + "/", config.proxy) for u in self.urls}
        self.max_events = max_events or config.max_events
        self.max_timeout = max_timeout or config.max_timeout
        self.max_event_bytes = config.max_event_bytes
        self.stop = stop or Stop()
        self._current = 0
        self._context: Optional[ssl.SSLContext] = None
        self._context_stamp: Tuple[Any, ...] = ()  # see `_files_stamp`
        #: Why changed TLS files are not in use yet (the last good ones are), for the caller to log.
        self.tls_files_problem: Optional[str] = None
        #: The connection carrying the current request (shut down by `abort`), and whether it is new.
        self._active: Any = None
        self._fresh, self._connected, self._aborted = True, False, False
        self._requester: Optional[_Requester] = None
        self._session = requests.Session()
        self._session.trust_env = False  # see `transport.Adapter`
        self._session.headers.clear()
        self._session.headers.update(
            {"User-Agent": f"kata-events/{__version__}", "Accept": "*/*", "Accept-Encoding": "identity"}
        )

    @property
    def url(self) -> str:
        """The base URL currently in use."""
        return self.urls[self._current]

    def shown_proxies(self) -> Dict[str, str]:
        """The proxy of each base URL that has one, without credentials: for logs and messages."""
        return {u: without_credentials(p) for u, p in self.proxies.items() if p}

    def fetch(self, token: Optional[str], max_timeout: Optional[int] = None) -> Page:
        """Send one request and return the page, still streaming; raises `ApiError` subclasses.

        The request runs on the ``request`` thread: a stop (`Interrupted`) or the overall limit (a
        trickling handshake or headers) ends the wait at once, and the connection is cut."""
        limit = CONNECT_TIMEOUT * (len(self.urls) - 1) + int(max_timeout or self.max_timeout)
        limit += READ_TIMEOUT_MARGIN + DEADLINE_SLACK
        box: queue.Queue[Any] = queue.Queue(1)
        given_up = threading.Event()
        if self._requester is None or self._requester.busy:
            # The last request was given up and is still unwinding: it gets no more work.
            if self._requester is not None:
                self._requester.retire()
            self._requester = _Requester()
        self._requester.send(lambda: self._fetch(token, max_timeout), box, given_up)
        try:
            result = pages.handover(box, limit, self.stop, "answer", self.url)
        except (errors.Interrupted, errors.Unavailable):
            given_up.set()
            self.abort()
            with contextlib.suppress(queue.Empty):
                late = box.get_nowait()  # answered just now: nobody will read it
                if isinstance(late, Page):
                    late.close()
            raise
        if isinstance(result, BaseException):
            raise result
        return result

    def _fetch(self, token: Optional[str], max_timeout: Optional[int]) -> Page:
        seconds = int(max_timeout or self.max_timeout)
        params = {"max_events": str(self.max_events), "max_timeout": f"PT{seconds}S"}
        if token:
            params["continuation_token"] = token
        elif self.filter:
            params["filter"] = self.filter
        read_timeout = seconds + READ_TIMEOUT_MARGIN
        self._aborted = False
        failures: List[_Unreachable] = []
        for attempt in range(len(self.urls)):
            index = (self._current + attempt) % len(self.urls)
            base = self.urls[index]
            try:
                response = self._request(base, params, read_timeout)
            except _Unreachable as exc:
                failures.append(exc)
                continue
            self._current = index
            return self._check_status(response, base, token, read_timeout + DEADLINE_SLACK)
        text = "; ".join(map(str, failures))
        if len(failures) > 1:
            text = f"no address of the Central Node answered: {text}"
        raise errors.Unavailable(text, answered=all(failure.answered for failure in failures))

    def _watch(self, conn: Any, connected: bool) -> None:
        """Told by the connection pool which connection carries the request, and when it is up."""
        if not connected:
            self._active, self._fresh = conn, conn.sock is None
        self._connected = connected or not self._fresh

    def _request(self, base: str, params: Dict[str, str], read_timeout: float, again: bool = True) -> Any:
        """Send the request on the kept-alive connection (a new one if needed); the answer's head."""
        self._mount()
        self._active, self._fresh, self._connected = None, True, False
        url = base + API_PATH.format(external_system_id=self.external_system_id)
        proxy = self.proxies[base]
        shown = without_credentials(proxy or "")
        cannot = f"cannot connect to {base}" + (f" through the proxy {shown}" if proxy else "")
        try:
            return self._session.get(
                url,
                params=params,
                timeout=(CONNECT_TIMEOUT, read_timeout),
                stream=True,  # the body is read by the page, as it comes
                allow_redirects=False,
                proxies={"https": proxy} if proxy else {},
            )
        except requests.ReadTimeout:
            if not self._connected:  # urllib3 counts a handshake that does not end as a read timeout
                raise _Unreachable(f"{cannot}: the TLS handshake timed out") from None
            raise errors.Unavailable(
                f"{base} did not answer within {read_timeout:.0f} s", reason="timeout"
            ) from None
        except requests.RequestException as exc:
            if again and not self._fresh and not self._aborted:
                # The server closed the idle connection as the request went out: once more, anew.
                return self._request(base, params, read_timeout, again=False)
            failure, reason = exc, transport.root_reason(exc)
        if isinstance(failure, requests.exceptions.ProxyError):
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                # ca_file and pin_sha256 are the Central Node's; the proxy's TLS is OpenSSL's default.
                reason += (
                    ": an https:// proxy's certificate is checked against the system's trust store; "
                    "install its CA there, or point SSL_CERT_FILE at a bundle that holds it"
                )
            raise _Unreachable(f"{cannot}: the proxy {shown} failed: {reason}")
        if proxy and not self._connected and not getattr(self._active, "tunnel_up", True):
            # The proxy ended the connection before its tunnel was up: it is the one to blame.
            raise _Unreachable(
                f"{cannot}: the proxy {shown} closed the connection without a complete answer to the "
                f"CONNECT request ({reason}): check the proxy option or HTTPS_PROXY (address, "
                "credentials) and that the proxy lets this host reach the Central Node"
            )
        for cause in transport.causes(failure):
            pin = _PIN_MISMATCH.search(str(cause))
            if pin:
                seen = pin.group(1).lower()
                raise errors.TlsVerifyFailed(
                    f"the server at {base} was not trusted: fingerprints did not match (pinned "
                    f"{self.trust.pin}, the server's certificate has {seen})",
                    server_fingerprint=seen,
                )
            words = transport.own_words(cause)
            if isinstance(cause, ssl.SSLCertVerificationError):
                fp = None if proxy else probe_server_fingerprint(base, self.cert, self.key, self.key_password)
                raise errors.TlsVerifyFailed(
                    f"the server at {base} was not trusted ({self.trust.text}): {words}",
                    server_fingerprint=fp,
                )
            if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
                # Not about trust (an address whose TLS end has nothing behind it, a plain-HTTP
                # port, our certificate refused): the next address may answer.
                through = f"TLS handshake with {base} through the proxy {shown} failed: {words}"
                raise _Unreachable(through if proxy else handshake_failure(base, words), answered=True)
        connecting = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
        if isinstance(failure, (requests.ConnectTimeout, requests.exceptions.InvalidURL)) or any(
            isinstance(cause, connecting) for cause in transport.causes(failure)
        ):
            raise _Unreachable(f"{cannot}: {reason}")
        raise _Unreachable(f"{base} closed the connection before answering: {reason}")

    def _files_stamp(self) -> Tuple[Any, ...]:
        """Identity, size and time of the certificate, key and CA files: a change means new files."""
        stamp: List[Any] = []
        password_file = getattr(self.key_password, "path", None)
        for path in (self.cert, self.key, self.trust.path, password_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
        return tuple(stamp)

    def _mount(self) -> None:
        """The TLS settings of every new connection, made again when their files changed: a
        certificate renewed in place is used from the next connection on, without a restart. Files
        changed but not usable (the key not yet replaced, a file half written) keep the last good
        settings until the next connection; only at the first connection are they an error."""
        stamp = self._files_stamp()
        if self._context is not None and stamp == self._context_stamp:
            return
        try:
            ctx = transport.context(self.trust, self.cert, self.key, self.key_password)
        except (errors.ClientTlsError, errors.TlsVerifyFailed) as exc:
            if self._context is None:
                raise
            self.tls_files_problem = str(exc)
            return
        self._context, self._context_stamp = ctx, stamp
        self.tls_files_problem = None
        old = self._session.adapters.get("https://")
        self._session.mount("https://", transport.Adapter(ctx, self.trust.pin, self._watch))
        if old is not None:
            old.close()  # its open connections use the old files

    def _check_status(
        self, response: requests.Response, base: str, token: Optional[str], limit: float
    ) -> Page:
        status = response.status_code
        if status == 200:
            sock = getattr(self._active, "sock", None)
            return Page(response, base, self.max_event_bytes, sock, limit, self.stop)
        try:
            # A body read to its end leaves the connection ready for the next request.
            body = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
        except pages.CONNECTION_ERRORS:
            body = b""
        finally:
            response.close()
        text = pages.excerpt(body)
        said = text or "empty body"
        if status == 401:
            raise errors.Unauthorized(f"HTTP 401 from {base}: {said}")
        if status == 404 and b"subscription not found" in body.lower():
            raise errors.SubscriptionLost(f"HTTP 404 from {base}: {text}")
        if token and status in (400, 404, 414):
            raise errors.TokenRefused(
                f"HTTP {status} from {base} for the request carrying the continuation token "
                f"({len(token)} characters): {said}",
                status=status,
            )
        if status == 400:
            raise errors.BadRequest(text or "HTTP 400 with an empty body")
        if status == 414:
            raise errors.BadRequest(f"HTTP 414 (URI too long): {said}; is the filter that long?")
        if status == 429 or status >= 500:
            raise errors.Unavailable(
                f"HTTP {status} from {base}: {said}",
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                reason="http_error",
            )
        raise errors.BadResponse(f"unexpected HTTP {status} from {base}", excerpt=text)

    def close(self) -> None:
        if self._requester is not None:
            self._requester.retire()
            self._requester = None
        self._active = None
        self._session.close()

    def abort(self) -> None:
        """Cut the connection from another thread, so a blocked long poll returns at once."""
        self._aborted = True
        sock = getattr(self._active, "sock", None)
        if sock is not None:
            pages.shutdown_socket(sock)
