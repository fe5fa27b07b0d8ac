"""One streamed answer: its body read and split on a thread, handed over chunk by chunk, its envelope checked.

`Page` hands the caller each network chunk's events as raw lines while the ``page-reader`` thread
reads and splits the next one; the hand-over (`handover`) waits at most the overall limit for each
part and looks at the stop state meanwhile, so a trickling server is abandoned and a stop is never
kept waiting. At the end the envelope is checked against `ENVELOPE_SCHEMA` and the continuation
token is given out. It never writes to stdout and never logs.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

import requests
import urllib3.exceptions

from kata_events.source import transport
from kata_events.source.errors import BadResponse, Interrupted, Unavailable
from kata_events.source.tokens import token_problem
from kata_events.stopping import STOP_POLL, WAKE, Stop

if TYPE_CHECKING:
    from kata_events.source.stream import SkippedEvent

#: Large reads keep Python's per-chunk work small next to the bytes moved.
CHUNK_SIZE = 1 << 20
EXCERPT_CHARS = 200
#: Failures of the connection while a body is read: urllib3's own are not OSErrors.
CONNECTION_ERRORS = (OSError, urllib3.exceptions.HTTPError, requests.RequestException)


def excerpt(data: bytes, limit: int = EXCERPT_CHARS) -> str:
    """A short printable excerpt of a body for a log line."""
    text = data[: limit * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


#: The answer's envelope: every top-level key but the events' contents. Unknown keys are harmless.
ENVELOPE_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Events API answer envelope",
    "type": "object",
    "properties": {"continuationToken": {"type": "string", "minLength": 1}, "events": {"type": "array"}},
    "required": ["continuationToken", "events"],
}
_envelope_validator: Any = None


def envelope_problem(envelope: Dict[str, Any]) -> Optional[str]:
    """What makes an envelope (``events`` emptied by the splitter) not an Events API answer, or None."""
    global _envelope_validator
    if _envelope_validator is None:
        import jsonschema  # loaded once the first page is in, not before the first request

        _envelope_validator = jsonschema.Draft202012Validator(ENVELOPE_SCHEMA)
    error = next(iter(_envelope_validator.iter_errors(envelope)), None)
    if error is None:
        return None
    if error.validator == "required":
        missing = next(k for k in ENVELOPE_SCHEMA["required"] if k not in envelope)
        return f"no {missing}"
    where = "/".join(str(p) for p in error.absolute_path) or "the body"
    if where == "continuationToken" and error.validator == "type":
        return "continuationToken is not a string"
    return f"{where}: {error.message}"


def handover(box: queue.Queue[Any], limit: float, stop: Stop, stage: str, base: str) -> Any:
    """The next item another thread hands over in ``box``: waits at most ``limit`` seconds, looking
    at ``stop`` every `STOP_POLL`. Raises `Interrupted` at a stop; past the limit, the retried
    `Unavailable` of a request to ``base`` given up on."""
    deadline = time.monotonic() + limit
    with stop.waiting_on(box):
        while True:
            if stop.stopping:
                raise Interrupted(f"stopped while waiting for the {stage}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"{base}: no {stage} within {limit:.0f} s: request abandoned (the server, or something "
                    "in between, answers too slowly: a TLS handshake, headers or body trickling in)",
                    reason="timeout",
                    answered=True,
                )
            try:
                item = box.get(timeout=min(left, STOP_POLL))
            except queue.Empty:
                continue
            if item is not WAKE:
                return item


class Page:
    """One streamed response: iterate `batches()` for raw event lines, then `finish()` for the token.

    The body is read and split by the ``page-reader`` thread, a few chunks ahead of the caller: the
    caller writes the previous chunk's events (in C, without the GIL) while that thread reads (socket
    and TLS work, also without the GIL) and splits the next, so they overlap on two cores and the
    server's sending never waits on our splitting.
    """

    def __init__(
        self,
        response: requests.Response,
        base_url: str,
        max_event_bytes: int,
        sock: Optional[socket.socket],
        limit: float,
        stop: Stop,
    ) -> None:
        # msgspec and the splitter load here, once the first answer is in: not before the first request.
        from kata_events.source.stream import PageSplitter

        self._response = response
        self.base_url = base_url
        self._sock = sock
        #: How long the next part of the body may take, and the stop that ends the wait early.
        self._limit = limit
        self._stop = stop
        self._splitter = PageSplitter(max_event_bytes)
        self._skipped: List[SkippedEvent] = []
        #: Bytes of the body read so far (a few chunks ahead of the events handed back).
        self.bytes_read = 0
        #: From the reading thread: ``(events, skipped)`` per chunk, then None, or its failure.
        self._queue: queue.Queue[Any] = queue.Queue(2)
        self._closed = threading.Event()
        self._reading = False  # the reading thread is inside the body

    def _read(self, decode: bool) -> None:
        raw, splitter, end = self._response.raw, self._splitter, None
        try:
            while not self._closed.is_set():
                # Decoded only if the server encoded it although not asked to: urllib3 then copies
                # through a buffer, which a plain body is spared.
                chunk = raw.read(CHUNK_SIZE, decode_content=decode)
                if not chunk:
                    left = getattr(raw, "length_remaining", None)
                    if left:
                        raise ConnectionError(f"the body ended {left} bytes early")
                    break
                self.bytes_read += len(chunk)
                events = splitter.feed(chunk)
                skipped, splitter.skipped = splitter.skipped, []
                if events or skipped:
                    self._put((events, skipped))
        except BaseException as exc:  # handed to the caller's thread, which decides
            end = exc
        self._reading = False
        self._put(end)  # None: the body's end (nothing, once closed)

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return

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
        from kata_events.source.stream import MalformedBody

        encoding = self._response.headers.get("Content-Encoding", "").strip().lower()
        self._reading = True
        decode = encoding not in ("", "identity")
        threading.Thread(target=self._read, args=(decode,), name="page-reader", daemon=True).start()
        try:
            while True:
                item = handover(self._queue, self._limit, self._stop, "part of the body", self.base_url)
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                events, skipped = item
                self._skipped += skipped
                if events:
                    yield events
        except MalformedBody as exc:
            raise BadResponse(f"the page is not valid JSON: {exc}", excerpt=exc.excerpt) from None
        except CONNECTION_ERRORS as exc:
            raise Unavailable(
                f"the connection broke after {self.bytes_read} bytes of the page: "
                f"{transport.root_reason(exc)}",
                answered=True,
            ) from None

    def finish(self) -> str:
        """The page's continuation token, once the whole body was read and checked."""
        from kata_events.source.stream import MalformedBody

        try:
            envelope = self._splitter.close()
        except MalformedBody as exc:
            raise BadResponse(
                f"the page is incomplete or not valid JSON: {exc}", excerpt=exc.excerpt
            ) from None
        problem = envelope_problem(envelope)
        if problem:
            raise BadResponse(
                f"the page does not look like an Events API response ({problem})",
                excerpt=excerpt(repr(envelope).encode()),
            )
        token = envelope["continuationToken"]
        problem = token_problem(token)
        if problem:
            # Saved, it would make every later request fail, across restarts too.
            raise BadResponse(
                f"the page's continuationToken is not one a server would send: {problem}",
                excerpt=excerpt(token.encode("utf-8", "replace"), 60),
            )
        return token

    def close(self) -> None:
        self._closed.set()
        if self._reading and self._sock is not None:
            # The reading thread is inside a read, holding the response's buffer: closing the
            # response would wait for the server's next byte (for ever, if it trickles). Shut
            # the socket down first, so that read returns at once (a stop, a deadline).
            shutdown_socket(self._sock)
        # A body read to its end has put the connection back for the next request already;
        # otherwise this closes it: a connection mid-answer is never reused.
        self._response.close()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shutdown_socket(sock: socket.socket) -> None:
    """Shut down a connection's socket (from any thread); errors are ignored."""
    # Through an https:// proxy urllib3 wraps the Central Node's TLS in an SSLTransport over the
    # proxy's SSLSocket: cutting the socket below ends both.
    while not isinstance(sock, socket.socket) and hasattr(sock, "socket"):
        sock = sock.socket
    with contextlib.suppress(OSError):
        # socket.socket's own shutdown: an SSLSocket's would drop its TLS object under the reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
