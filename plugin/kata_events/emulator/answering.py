"""What each request to the emulator gets: the Events API's answers, the control endpoints, faults.

`Answering` is the part of `kata_events.emulator.server.Emulator` that speaks HTTP: a connection's
handler (`kata_events.emulator.wire`) hands it each request, and it answers through the handler's
``send_response``/``wfile``; the faults that cut, trickle or hold an answer write to the socket
itself. What the events and approvals are is the server's business. Never writes to stdout.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import ssl
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from kata_events.emulator.faults import Fault, hostile_event

if TYPE_CHECKING:
    from kata_events.emulator.store import _Page
    from kata_events.emulator.wire import _Handler

log = logging.getLogger("kata_events.emulator")

EVENTS_PATH_PREFIX = "/kata/events_api/v1/"
DEFAULT_MAX_EVENTS = 1000
MAX_TIMEOUT_LIMIT = 300.0
#: The continuation tokens of the huge_token and odd_token faults.
HUGE_TOKEN = "A" * (2 << 20)
ODD_TOKEN = 'odd token"\x01\u00e9'
EVENTS_PER_CHUNK = 2000
HANG_POLL = 0.1

_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def parse_iso_duration(text: str) -> float:
    """Seconds in an ISO-8601 time duration such as ``PT60S``, ``PT1M30S``, ``PT0.5S``.

    Raises ``ValueError`` for anything else (date parts such as ``P1D`` included).
    """
    import re

    match = re.fullmatch(
        r"PT(?=\d|\.\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?|\.\d+)S)?", text.strip().upper()
    )
    if not match or not any(match.groups()):
        raise ValueError(f"not an ISO-8601 duration like PT60S: {text!r}")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


class _HttpError(Exception):
    def __init__(self, status: int, body: Dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _bad_request(reason: str) -> _HttpError:
    return _HttpError(400, {"error": "Bad Request", "reason": reason})


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: Dict[str, str]
    body: bytes


class Answering:
    """The HTTP side of `Emulator` (a mixin: it uses the emulator's store, approvals and faults)."""

    def _send(
        self,
        out: _Handler,
        status: int,
        body: Union[bytes, Sequence[bytes], Iterator[bytes]],
        content_length: Optional[int] = None,
        content_type: str = "application/json",
        extra_headers: Sequence[Tuple[str, str]] = (),
        limit: Optional[int] = None,
        close: bool = False,
    ) -> None:
        """Send a response; with ``limit`` only that many body bytes go out (for cut bodies)."""
        chunks: Iterable[bytes] = [body] if isinstance(body, bytes) else body
        if content_length is None:
            chunks = list(chunks)
            content_length = sum(len(c) for c in chunks)
        out.send_response(status)
        out.send_header("Content-Type", content_type)
        out.send_header("Content-Length", str(content_length))
        for name, value in extra_headers:
            out.send_header(name, value)
        if close:
            out.send_header("Connection", "close")
        out.end_headers()
        pending = b""
        budget = content_length if limit is None else limit
        for chunk in chunks:
            if budget <= 0:
                break
            if len(chunk) > budget:
                chunk = chunk[:budget]
            budget -= len(chunk)
            # Small chunks are merged into large writes.
            pending = pending + chunk if pending else chunk
            if len(pending) >= 1 << 20:
                out.wfile.write(pending)
                pending = b""
        if pending:
            out.wfile.write(pending)

    def _send_json(self, out: _Handler, status: int, obj: Any, **kwargs: Any) -> None:
        self._send(out, status, _json_bytes(obj), **kwargs)

    def _dispatch(self, out: _Handler, request: _Request, fingerprint: Optional[str]) -> bool:
        """Answer one request; return False when the connection must close."""
        if request.method == "TOO_LONG":
            log.info("request line too long: 414")
            self._send_json(out, 414, {"error": "URI Too Long"}, close=True)
            return False
        parts = urlsplit(request.target)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if path.startswith(EVENTS_PATH_PREFIX):
                return self._events_api(out, request, path, query, fingerprint)
            if path.startswith("/emulator/"):
                self._control(out, request, path, query)
                return True
            raise _HttpError(404, {"error": "Not Found"})
        except _HttpError as err:
            self._send_json(out, err.status, err.body)
            return True

    # -- control endpoints -------------------------------------------------------------------------

    def _control(self, out: _Handler, request: _Request, path: str, query: Dict[str, str]) -> None:
        name = path[len("/emulator/") :].rstrip("/")
        expected = "GET" if name == "status" else "POST"
        if name not in ("status", "approve", "revoke", "faults", "events"):
            raise _HttpError(404, {"error": "Not Found"})
        if request.method != expected:
            raise _HttpError(405, {"error": "Method Not Allowed", "reason": f"use {expected}"})
        if name == "status":
            self._send_json(out, 200, self.status())
            return
        if name in ("approve", "revoke"):
            ext_id = query.get("external_system_id")
            if not ext_id:
                raise _bad_request("external_system_id is required")
            fingerprint = query.get("fingerprint") or None
            try:
                done = (self.approve if name == "approve" else self.revoke)(ext_id, fingerprint)
            except ValueError as exc:
                raise _bad_request(f"fingerprint: {exc}") from None
            if not done:
                what = "pending certificate" if name == "approve" else "approval"
                raise _HttpError(404, {"error": "Not Found", "reason": f"no {what} for {ext_id}"})
            self._send_json(out, 200, {name + "d": done})
            return
        if name == "faults":
            try:
                data = json.loads(request.body or b"null")
                items = data if isinstance(data, list) else [data]
                faults = [Fault.from_obj(item) for item in items]
            except ValueError as exc:
                raise _bad_request(f"faults: {exc}") from None
            for fault in faults:
                self.inject(fault)
            self._send_json(out, 200, {"queued": [f.to_dict() for f in faults]})
            return
        # events
        try:
            count = int(query.get("count", "1"))
            if count < 0:
                raise ValueError
        except ValueError:
            raise _bad_request("count must be a non-negative integer") from None
        try:
            age = float(query.get("age", "0"))
            first, last = self.add_events(count, age)
        except ValueError:
            raise _bad_request(f"age must be a number of seconds from 0 to {self.retention:g}") from None
        self._send_json(out, 200, {"added": count, "first_seq": first, "last_seq": last})

    # -- events API --------------------------------------------------------------------------------

    def _events_api(
        self,
        out: _Handler,
        request: _Request,
        path: str,
        query: Dict[str, str],
        fingerprint: Optional[str],
    ) -> bool:
        ext_id = path[len(EVENTS_PATH_PREFIX) :]
        if not ext_id.endswith("/events") or "/" in ext_id[: -len("/events")]:
            raise _HttpError(404, {"error": "Not Found"})
        ext_id = ext_id[: -len("/events")]
        with self._lock:
            self._requests_served += 1
        if request.method != "GET":
            raise _HttpError(405, {"error": "Method Not Allowed", "reason": "use GET"})
        try:
            uuid.UUID(ext_id)
        except ValueError:
            raise _bad_request(f"external system id {ext_id!r} is not a UUID") from None

        fault = self._faults.take()
        body_fault: Optional[str] = None
        hostile: Optional[Fault] = None
        shift = 0
        if fault is not None:
            log.info("injecting fault %s", fault.kind)
            kind = fault.kind
            if kind in ("500", "503"):
                raise _HttpError(int(kind), {"error": HTTPStatus(int(kind)).phrase})
            if kind == "502":
                self._send(out, 502, _BAD_GATEWAY_HTML, content_type="text/html")
                return True
            if kind == "429":
                retry_after = fault.retry_after
                shown = str(int(retry_after)) if retry_after == int(retry_after) else f"{retry_after:g}"
                self._send_json(
                    out, 429, {"error": "Too Many Requests"}, extra_headers=[("Retry-After", shown)]
                )
                return True
            if kind == "hang":
                self._hang(out)
                return False
            if kind in ("trickle_headers", "trickle_body"):
                self._trickle(out, kind == "trickle_body", fault.delay)
                return False
            if kind == "slow" and self._stopping.wait(fault.delay):
                return False
            if kind == "401":
                if fingerprint:
                    self.revoke(ext_id, fingerprint)
                raise _HttpError(401, {"error": "Unauthorized"})
            if kind == "404":
                token = query.get("continuation_token")
                with self._lock:
                    entry = self._tokens.get(token or "")
                    if entry is not None:
                        self._drop_subscription_locked(entry[0])
                raise _HttpError(404, {"error": "Subscription not found"})
            if kind == "400":
                raise _bad_request("continuation_token: invalid token")
            if kind == "414":
                self._send_json(out, 414, {"error": "URI Too Long"}, close=True)
                return False
            if kind in ("drop", "truncated", "no_events", "no_token", "huge_token", "odd_token"):
                body_fault = kind
            if kind in ("huge_event", "deep_event"):
                hostile = fault
            if kind == "other_events":
                shift = fault.shift

        self._check_approved(ext_id, fingerprint)
        max_events = self._int_param(query, "max_events", DEFAULT_MAX_EVENTS, 1, self.max_events_limit)
        timeout = self.default_max_timeout
        if "max_timeout" in query:
            try:
                timeout = parse_iso_duration(query["max_timeout"])
            except ValueError as exc:
                raise _bad_request(f"max_timeout: {exc}") from None
            if not 0 < timeout <= MAX_TIMEOUT_LIMIT:
                raise _bad_request(
                    f"max_timeout: must be more than PT0S and at most PT{MAX_TIMEOUT_LIMIT:g}S"
                )
        token = query.get("continuation_token")
        page, new_token = self._serve_page(ext_id, token, query.get("filter"), max_events, timeout, shift)
        if page is None:
            return False  # stopping
        self._send_page(out, page, new_token, body_fault, hostile)
        return body_fault != "drop"

    @staticmethod
    def _int_param(query: Dict[str, str], name: str, default: int, low: int, high: int) -> int:
        if name not in query:
            return min(default, high)
        raw = query[name].strip()
        try:
            value = int(raw)
        except ValueError:
            raise _bad_request(f"{name}: not an integer: {raw!r}") from None
        if not low <= value <= high:
            raise _bad_request(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def _page_pieces(self, page: _Page) -> Tuple[List[bytes], List[bytes], int]:
        """Per-event heads and tails, and the exact encoded length of the events array's content.

        Every head but the first starts with the separating comma, so a page is heads and tails
        interleaved.
        """
        head = b',{"EmulatorSeq":%d,"Timestamp":%d,'
        heads = list(map(head.__mod__, zip(page.seqs, page.stamps)))
        if heads:
            heads[0] = heads[0][1:]
        tails = list(map(self.factory.tails.__getitem__, page.templates))
        tail_lengths = self._tail_lengths
        total = sum(map(len, heads)) + sum(map(tail_lengths.__getitem__, page.templates))
        return heads, tails, total

    def _send_page(
        self,
        out: _Handler,
        page: _Page,
        token: str,
        body_fault: Optional[str],
        hostile: Optional[Fault] = None,
    ) -> None:
        heads, tails, events_length = self._page_pieces(page)
        hostile_length, hostile_chunks = hostile_event(hostile) if hostile else (0, iter(()))
        if hostile and heads:
            hostile_length += 1
            hostile_chunks = itertools.chain(hostile_chunks, [b","])
        if body_fault in ("huge_token", "odd_token"):
            # Not registered: a client that used it would get 404 Subscription not found.
            token = HUGE_TOKEN if body_fault == "huge_token" else ODD_TOKEN
        token_part = b'"continuationToken":' + json.dumps(token).encode("ascii") + b"}"

        def event_chunks() -> Iterator[bytes]:
            for start in range(0, len(heads), EVENTS_PER_CHUNK):
                stop = min(start + EVENTS_PER_CHUNK, len(heads))
                parts: List[bytes] = [b""] * (2 * (stop - start))
                parts[0::2] = heads[start:stop]
                parts[1::2] = tails[start:stop]
                yield b"".join(parts)

        if body_fault == "no_events":
            self._send(out, 200, b"{" + token_part, content_type="application/octet-stream")
            return
        if body_fault == "no_token":
            opening, closing = b'{"events":[', b"]}"
        else:
            opening, closing = b'{"events":[', b"]," + token_part

        def body() -> Iterator[bytes]:
            yield opening
            yield from hostile_chunks
            yield from event_chunks()
            yield closing

        length = len(opening) + hostile_length + events_length + len(closing)
        if body_fault == "truncated":
            cut = max(1, length // 2)
            self._send(
                out, 200, body(), content_length=cut, content_type="application/octet-stream", limit=cut
            )
            return
        if body_fault == "drop":
            self._send(
                out,
                200,
                body(),
                content_length=length,
                content_type="application/octet-stream",
                limit=max(1, length // 2),
            )
            # Close the descriptor without a TLS close_notify: the client sees the body cut short.
            socket.socket.shutdown(out.connection, socket.SHUT_RDWR)
            return
        self._send(out, 200, body(), content_length=length, content_type="application/octet-stream")

    def _trickle(self, out: _Handler, headers_first: bool, delay: float) -> None:
        """One byte every ``delay`` s (after whole headers if ``headers_first``) until the client leaves."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        if headers_first:
            out.connection.sendall(head)
            head = b'{"events":['
        data = head + b" " * (1 << 20)
        for i in range(len(data)):  # bounded: a client that never leaves gets ~ a million delays
            if self._stopping.wait(delay):
                return
            try:
                out.connection.sendall(data[i : i + 1])
            except (OSError, ssl.SSLError):
                return

    def _hang(self, out: _Handler) -> None:
        """Hold the connection without answering until the client leaves or the emulator stops."""
        out.connection.settimeout(HANG_POLL)
        while not self._stopping.is_set():
            try:
                if out.connection.recv(1) == b"":
                    return
            except socket.timeout:
                continue
            except (OSError, ssl.SSLError):
                return
