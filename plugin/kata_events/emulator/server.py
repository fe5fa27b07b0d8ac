"""The emulator itself: a mutual-TLS HTTP/1.1 server speaking the Central Node Events API.

Owns: the server (the standard library's `ThreadingHTTPServer`, one thread per connection; the TLS
handshake happens there, never in the accept loop), the event store (backlog, steady source
computed lazily from the clock, manual additions, retention), approvals (persisted in the state
directory), subscriptions and their tokens, long polling, fault injection, and the control
endpoints under ``/emulator/``.

Never writes to stdout; it reports through the ``kata_events.emulator`` logger.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import os
import secrets
import socket
import socketserver
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from kata_events import certs
from kata_events.emulator.anycert import accept_any_client_certificate
from kata_events.emulator.events import EventFactory
from kata_events.emulator.faults import Fault, FaultQueue, hostile_event
from kata_events.emulator.filters import Filter, FilterSyntaxError, compile_filter
from kata_events.options import parse_listen

__all__ = ["Emulator", "default_state_dir", "parse_iso_duration"]

log = logging.getLogger("kata_events.emulator")


def default_state_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """Where the emulator keeps its CA and approvals unless told: ``emulator`` in the directory
    `run` keeps its tokens in (``$XDG_STATE_HOME/kata-events``, else ``~/.local/state/kata-events``)."""
    from kata_events.paths import state_home

    return state_home(os.environ if environ is None else environ) / "emulator"


EVENTS_PATH_PREFIX = "/kata/events_api/v1/"
DEFAULT_MAX_EVENTS = 1000
MAX_TIMEOUT_LIMIT = 300.0
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
MAX_HEADER_BYTES = 65536
MAX_CONTROL_BODY = 1 << 20
#: A request line longer than MAX_HEADER_BYTES is read (and dropped) up to this much, then gets 414.
MAX_DRAINED_REQUEST = 64 << 20
#: The continuation tokens of the huge_token and odd_token faults.
HUGE_TOKEN = "A" * (2 << 20)
ODD_TOKEN = 'odd token"\x01\u00e9'
#: A client going back to the token of a page it delivered a few seconds ago (a stop on a pipe, the
#: settle time) asks again with a token up to hundreds of pages old when pages are small.
TOKENS_KEPT_PER_SUBSCRIPTION = 4096
EVENTS_PER_CHUNK = 2000
HANG_POLL = 0.1
ACCEPT_POLL = 0.1
STOP_JOIN = 0.5

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
class _Subscription:
    id: str
    external_system_id: str
    filter: Optional[Filter]
    created: float
    last_used: float
    tokens: List[str] = field(default_factory=list)
    # Filter result per template (None until computed), unless the filter reads per-event fields.
    template_matches: Optional[List[Optional[bool]]] = None
    per_event: bool = False


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: Dict[str, str]
    body: bytes


class _Page:
    """The events chosen for one response: parallel lists of seq, timestamp and template."""

    def __init__(self, seqs: List[int], stamps: List[int], templates: List[int], next_position: int) -> None:
        self.seqs = seqs
        self.stamps = stamps
        self.templates = templates
        self.next_position = next_position

    def __len__(self) -> int:
        return len(self.seqs)


class Emulator:
    """A Central Node Events API on loopback, for trying pipelines and for tests.

    Use as a context manager, or call :meth:`start` (returns once listening) and :meth:`stop`.

    - ``listen``: ``HOST:PORT``; port 0 picks a free one (then read :attr:`port` / :attr:`url`).
    - ``state_dir``: CA, server certificate and approvals (default: `default_state_dir`).
    - ``approve``: ``"manual"`` (401 until :meth:`approve` or the control endpoint) or ``"auto"``.
    - ``backlog``: events present at start; ``rate``: new events per second, computed lazily from
      the clock (0: none); ``event_bytes``: approximate encoded size of one event.
    - ``retention``: seconds an event stays retrievable and a subscription may stay idle.
    - ``max_events_limit``: the largest ``max_events`` accepted; ``default_max_timeout``: the long
      poll when a request gives no ``max_timeout``.
    - ``seed``: the event templates; ``faults``: faults queued from the start (specs or objects).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:8443",
        state_dir: Union[str, os.PathLike[str], None] = None,
        approve: str = "manual",
        backlog: int = 1000,
        rate: float = 5.0,
        event_bytes: int = 1500,
        retention: float = 7200.0,
        max_events_limit: int = 72000,
        default_max_timeout: float = 10.0,
        seed: int = 1,
        faults: Iterable[Union[str, Fault, Dict[str, Any]]] = (),
        templates: int = 256,
    ) -> None:
        if approve not in ("auto", "manual"):
            raise ValueError("approve must be 'auto' or 'manual'")
        if backlog < 0 or rate < 0 or retention <= 0 or max_events_limit < 1:
            raise ValueError("backlog and rate must be >= 0, retention > 0, max_events_limit >= 1")
        if not 0 < default_max_timeout <= MAX_TIMEOUT_LIMIT:
            raise ValueError(f"default_max_timeout must be in (0, {MAX_TIMEOUT_LIMIT:g}]")
        self.host, self._requested_port = parse_listen(listen, default_host=None)
        self.state_dir = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
        self.approve_mode = approve
        self.backlog = backlog
        self.rate = float(rate)
        self.retention = float(retention)
        self.max_events_limit = max_events_limit
        self.default_max_timeout = float(default_max_timeout)
        self.factory = EventFactory(seed=seed, event_bytes=event_bytes, templates=templates)
        self._tail_lengths = [len(t) for t in self.factory.tails]
        self._faults = FaultQueue()
        for fault in faults:
            self._faults.add(Fault.from_obj(fault))

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        # Event store: event ``_base_seq + i`` appeared at ``_stamps[i]`` (µs) and uses template
        # ``_templates[i]``.
        self._base_seq = 1
        self._stamps: List[int] = []
        self._templates: List[int] = []
        self._rate_start = 0.0
        self._rate_emitted = 0
        self._subscriptions: Dict[str, _Subscription] = {}
        self._tokens: Dict[str, Tuple[str, int]] = {}
        self._approved: Dict[Tuple[str, str], float] = {}
        self._pending: Dict[Tuple[str, str], float] = {}
        self._requests_served = 0

        self._server: Optional[_Server] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._connections: Set[ssl.SSLSocket] = set()
        self._raw_connections: Set[socket.socket] = set()
        self._threads: Set[threading.Thread] = set()
        self._ssl_context: Optional[ssl.SSLContext] = None
        self.port = 0
        self.ca_file = self.state_dir / "ca.crt"
        self.server_cert_file = self.state_dir / "server.crt"
        self.server_key_file = self.state_dir / "server.key"
        self.approvals_file = self.state_dir / "approvals.json"

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def events_url(self, external_system_id: str) -> str:
        return f"{self.url}{EVENTS_PATH_PREFIX}{external_system_id}/events"

    def start(self) -> Emulator:
        """Prepare certificates and state, bind, and start serving; returns once listening."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._prepare_state_dir()
        self._ssl_context = self._make_ssl_context()
        self._load_approvals()
        now = time.time()
        with self._lock:
            self._rate_start = now
            self._append_locked(self.backlog, now)
        self._server = _Server(self, (self.host, self._requested_port))
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._server.serve_forever, args=(ACCEPT_POLL,), name="emulator-accept", daemon=True
        )
        self._accept_thread.start()
        log.info("emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop promptly: wake long polls and hung requests, close every connection."""
        if self._server is None:
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._server.shutdown()  # the accept loop ends within ACCEPT_POLL
        self._server.server_close()
        with self._lock:
            connections = list(self._raw_connections) + list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            try:
                # The base class method: shut the descriptor down under a thread blocked in
                # recv/send without touching the TLS object that thread is using.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_JOIN
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._server = None
        log.info("emulator stopped")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until :meth:`stop` is called (True) or ``timeout`` passes (False)."""
        return self._stopping.wait(timeout)

    # -- library controls --------------------------------------------------------------------------

    def add_events(self, count: int, age: float = 0.0) -> Tuple[int, int]:
        """Append ``count`` events; return the first and last sequence numbers added.

        ``age``: the events appeared that many seconds ago (a backlog the consumer is behind on).
        Stamps never go back: events added after younger ones share the youngest one's stamp.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        if not 0 <= age < self.retention:
            raise ValueError("age must be >= 0 and below the retention")
        with self._changed:
            now = time.time()
            self._catch_up_locked(now)
            first = self._next_seq_locked()
            self._append_locked(count, now - age)
            self._changed.notify_all()
            return first, first + count - 1

    def pause_source(self) -> None:
        """Stop the steady source: the events due so far stay, no more come (a backlog to drain)."""
        with self._changed:
            self._catch_up_locked(time.time())
            self.rate = 0.0

    def approve(self, external_system_id: str, fingerprint: Optional[str] = None) -> List[Dict[str, str]]:
        """Approve ``fingerprint`` for the id, or every pending certificate of the id when omitted."""
        with self._lock:
            if fingerprint is not None:
                pairs = [(external_system_id, certs.normalize_fingerprint(fingerprint))]
            else:
                pairs = [pair for pair in self._pending if pair[0] == external_system_id]
            now = time.time()
            for pair in pairs:
                self._pending.pop(pair, None)
                self._approved[pair] = now
            self._save_approvals_locked()
        for ext_id, fp in pairs:
            log.info("approved external system %s with certificate %s", ext_id, certs.format_fingerprint(fp))
        return [{"external_system_id": e, "fingerprint": f} for e, f in pairs]

    def revoke(self, external_system_id: str, fingerprint: Optional[str] = None) -> List[Dict[str, str]]:
        """Withdraw the approval of the id (one certificate, or all of them)."""
        normalized = certs.normalize_fingerprint(fingerprint) if fingerprint is not None else None
        with self._lock:
            pairs = [
                pair
                for pair in self._approved
                if pair[0] == external_system_id and (normalized is None or pair[1] == normalized)
            ]
            for pair in pairs:
                del self._approved[pair]
            self._save_approvals_locked()
        for ext_id, fp in pairs:
            log.info("revoked external system %s with certificate %s", ext_id, certs.format_fingerprint(fp))
        return [{"external_system_id": e, "fingerprint": f} for e, f in pairs]

    def is_approved(self, external_system_id: str, fingerprint: str) -> bool:
        with self._lock:
            return (external_system_id, certs.normalize_fingerprint(fingerprint)) in self._approved

    def inject(self, fault: Union[str, Fault, Dict[str, Any]], **options: Any) -> Fault:
        """Queue a fault: ``inject("503", count=3)``, ``inject("drop@10")``, ``inject(Fault(...))``."""
        if isinstance(fault, str) and options:
            made = Fault.from_obj({"kind": fault, **options})
        elif options:
            raise TypeError("options go with a kind string, not with a Fault or a mapping")
        else:
            made = Fault.from_obj(fault)
        self._faults.add(made)
        log.info("fault queued: %s", made)
        return made

    def clear_faults(self) -> None:
        self._faults.clear()

    def event_bytes(self, seq: int) -> bytes:
        """Exactly the bytes served for event ``seq`` (which must be retained)."""
        with self._lock:
            self._catch_up_locked(time.time())
            index = seq - self._base_seq
            if seq < 1 or index < 0 or index >= len(self._stamps):
                raise KeyError(
                    f"event {seq} is not retained (have {self._base_seq}..{self._next_seq_locked() - 1})"
                )
            return self.factory.encode(seq, self._stamps[index], self._templates[index])

    def event(self, seq: int) -> Dict[str, Any]:
        """Event ``seq`` as a dict (``json.loads(event_bytes(seq))``)."""
        return json.loads(self.event_bytes(seq))

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get."""
        with self._lock:
            self._catch_up_locked(time.time())
            return self._next_seq_locked()

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest retained event (== next_seq when none is retained)."""
        with self._lock:
            self._expire_locked(time.time())
            return self._base_seq

    @property
    def requests_served(self) -> int:
        with self._lock:
            return self._requests_served

    def status(self) -> Dict[str, Any]:
        """What ``GET /emulator/status`` returns."""
        now = time.time()
        with self._lock:
            self._catch_up_locked(now)
            self._expire_locked(now)
            return {
                "url": self.url,
                "ca_file": str(self.ca_file),
                "approve": self.approve_mode,
                "pending": [
                    {"external_system_id": e, "fingerprint": f, "since": t}
                    for (e, f), t in sorted(self._pending.items())
                ],
                "approved": [
                    {"external_system_id": e, "fingerprint": f, "since": t}
                    for (e, f), t in sorted(self._approved.items())
                ],
                "subscriptions": [
                    {
                        "id": sub.id,
                        "external_system_id": sub.external_system_id,
                        "filter": sub.filter.text if sub.filter else None,
                        "tokens": len(sub.tokens),
                        "idle_seconds": round(now - sub.last_used, 3),
                    }
                    for sub in self._subscriptions.values()
                ],
                "oldest_seq": self._base_seq,
                "next_seq": self._next_seq_locked(),
                "faults": self._faults.snapshot(),
                "requests_served": self._requests_served,
            }

    # -- state directory, certificates, approvals --------------------------------------------------

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        ca_key_file = self.state_dir / "ca.key"
        wanted = ["localhost", "127.0.0.1", "::1"]
        if self.host not in ("", "0.0.0.0", "::") and self.host not in wanted:
            wanted.append(self.host)
        ca: Optional[certs.KeyAndCert] = None
        if self.ca_file.exists() and ca_key_file.exists():
            ca = certs.KeyAndCert(key_pem=ca_key_file.read_bytes(), cert_pem=self.ca_file.read_bytes())
            if certs.cert_not_after(ca.cert_pem).timestamp() < time.time() + 86400:
                ca = None
        new_ca = ca is None
        if ca is None:
            ca = certs.make_ca()
            ca.write(self.ca_file, ca_key_file)
            log.info("made a new emulator CA: %s", self.ca_file)
        reuse_server = (
            not new_ca
            and self.server_cert_file.exists()
            and self.server_key_file.exists()
            and set(wanted) <= set(certs.cert_subject_alt_names(self.server_cert_file.read_bytes()))
            and certs.cert_not_after(self.server_cert_file.read_bytes()).timestamp() > time.time() + 86400
        )
        if not reuse_server:
            server = certs.make_server_cert(ca, wanted)
            server.write(self.server_cert_file, self.server_key_file)

    def _make_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.server_cert_file), str(self.server_key_file))
        return accept_any_client_certificate(ctx)

    def _load_approvals(self) -> None:
        try:
            data = json.loads(self.approvals_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable approvals file %s: %s", self.approvals_file, exc)
            return
        with self._lock:
            for item in data.get("approved", []):
                try:
                    pair = (str(item["external_system_id"]), certs.normalize_fingerprint(item["fingerprint"]))
                except (KeyError, TypeError, ValueError):
                    continue
                self._approved[pair] = float(item.get("since", 0))

    def _save_approvals_locked(self) -> None:
        data = {
            "approved": [
                {"external_system_id": e, "fingerprint": f, "since": t}
                for (e, f), t in sorted(self._approved.items())
            ]
        }
        certs.write_private_file(self.approvals_file, _json_bytes(data) + b"\n")

    # -- event store (all *_locked methods need self._lock) ----------------------------------------

    def _next_seq_locked(self) -> int:
        return self._base_seq + len(self._stamps)

    def _append_locked(self, count: int, when: float) -> None:
        stamp = int(when * 1_000_000)
        if self._stamps and stamp < self._stamps[-1]:
            stamp = self._stamps[-1]
        first = self._next_seq_locked()
        index = self.factory.template_index
        self._stamps.extend([stamp] * count)
        self._templates.extend(index(seq) for seq in range(first, first + count))

    def _catch_up_locked(self, now: float) -> None:
        """Materialize the steady source's events due by ``now``."""
        if self.rate <= 0 or self._rate_start <= 0:
            return
        due = int((now - self._rate_start) * self.rate)
        if due <= self._rate_emitted:
            return
        first_seq = self._next_seq_locked()
        last = self._stamps[-1] if self._stamps else 0
        for i in range(self._rate_emitted, due):
            stamp = max(last, int((self._rate_start + (i + 1) / self.rate) * 1_000_000))
            self._stamps.append(stamp)
            last = stamp
        self._templates.extend(
            self.factory.template_index(s) for s in range(first_seq, first_seq + due - self._rate_emitted)
        )
        self._rate_emitted = due

    def _next_rate_event_at(self) -> float:
        if self.rate <= 0:
            return math.inf
        return self._rate_start + (self._rate_emitted + 1) / self.rate

    def _expire_locked(self, now: float) -> None:
        """Drop events and subscriptions older than the retention window."""
        cutoff = int((now - self.retention) * 1_000_000)
        drop = bisect.bisect_left(self._stamps, cutoff)
        if drop:
            del self._stamps[:drop]
            del self._templates[:drop]
            self._base_seq += drop
        idle_cutoff = now - self.retention
        for sub in [s for s in self._subscriptions.values() if s.last_used < idle_cutoff]:
            self._drop_subscription_locked(sub.id)
            log.info("subscription %s of %s expired (idle)", sub.id, sub.external_system_id)

    def _drop_subscription_locked(self, sub_id: str) -> None:
        sub = self._subscriptions.pop(sub_id, None)
        if sub is not None:
            for token in sub.tokens:
                self._tokens.pop(token, None)

    def _matches_locked(self, sub: _Subscription, index: int) -> bool:
        flt = sub.filter
        assert flt is not None
        template = self._templates[index]
        if sub.per_event:
            seq = self._base_seq + index
            return flt.matches(self.factory.event_dict(seq, self._stamps[index], template))
        cache = sub.template_matches
        assert cache is not None
        result = cache[template]
        if result is None:
            # EmulatorSeq/Timestamp are not read by this filter, so any values do.
            result = cache[template] = flt.matches(self.factory.event_dict(0, 0, template))
        return result

    def _page_locked(self, sub: _Subscription, position: int, max_events: int) -> _Page:
        start = max(position, self._base_seq) - self._base_seq
        end = len(self._stamps)
        if sub.filter is None:
            stop = min(end, start + max_events)
            seqs = list(range(self._base_seq + start, self._base_seq + stop))
            return _Page(seqs, self._stamps[start:stop], self._templates[start:stop], self._base_seq + stop)
        picked: List[int] = []
        index = start
        while index < end and len(picked) < max_events:
            if self._matches_locked(sub, index):
                picked.append(index)
            index += 1
        stamps = self._stamps
        templates = self._templates
        return _Page(
            [self._base_seq + i for i in picked],
            [stamps[i] for i in picked],
            [templates[i] for i in picked],
            self._base_seq + index,
        )

    # -- answering (the handler calls `_dispatch`) -------------------------------------------------

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

    def _check_approved(self, ext_id: str, fingerprint: Optional[str]) -> None:
        if fingerprint is None:
            raise _HttpError(401, {"error": "Unauthorized"})
        pair = (ext_id, fingerprint)
        with self._lock:
            if pair in self._approved:
                return
            if self.approve_mode == "auto":
                self._approved[pair] = time.time()
                self._save_approvals_locked()
                log.info(
                    "auto-approved external system %s with certificate %s",
                    ext_id,
                    certs.format_fingerprint(fingerprint),
                )
                return
            new = pair not in self._pending
            if new:
                self._pending[pair] = time.time()
        if new:
            approve_url = f"{self.url}/emulator/approve?external_system_id={ext_id}&fingerprint={fingerprint}"
            log.warning(
                "external system waiting for approval (requests get 401 until then):\n"
                "  external system id:   %s\n"
                "  certificate SHA-256:  %s\n"
                "  approve it with:\n"
                "    curl -X POST --cacert %s '%s'",
                ext_id,
                certs.format_fingerprint(fingerprint),
                self.ca_file,
                approve_url,
            )
        raise _HttpError(401, {"error": "Unauthorized"})

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

    def _serve_page(
        self,
        ext_id: str,
        token: Optional[str],
        filter_text: Optional[str],
        max_events: int,
        timeout: float,
        shift: int = 0,
    ) -> Tuple[Optional[_Page], str]:
        """Pick the events for a response, long polling when none are available; ``shift``: start
        that many events before the token's position, or after the oldest event for a new subscription
        (the ``other_events`` fault)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            now = time.time()
            self._catch_up_locked(now)
            self._expire_locked(now)
            if token:
                entry = self._tokens.get(token)
                sub = self._subscriptions.get(entry[0]) if entry else None
                if entry is None or sub is None or sub.external_system_id != ext_id:
                    raise _HttpError(404, {"error": "Subscription not found"})
                position = max(self._base_seq, entry[1] - shift)
            else:
                try:
                    flt = compile_filter(filter_text)
                except FilterSyntaxError as exc:
                    raise _bad_request(f"filter: {exc}") from None
                sub = _Subscription(
                    id=secrets.token_hex(8), external_system_id=ext_id, filter=flt, created=now, last_used=now
                )
                if flt is not None:
                    sub.per_event = flt.uses_field("EmulatorSeq") or flt.uses_field("Timestamp")
                    if not sub.per_event:
                        sub.template_matches = [None] * self.factory.count
                self._subscriptions[sub.id] = sub
                position = self._base_seq + shift
                log.info("new subscription %s for %s (filter: %s)", sub.id, ext_id, filter_text or "none")
            while True:
                sub.last_used = time.time()
                page = self._page_locked(sub, position, max_events)
                if len(page) or self._stopping.is_set():
                    break
                position = page.next_position
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake = min(remaining, max(0.0, self._next_rate_event_at() - time.time()) + 0.001)
                self._changed.wait(wake)
                if self._stopping.is_set():
                    return None, ""
                now = time.time()
                self._catch_up_locked(now)
                self._expire_locked(now)
                if sub.id not in self._subscriptions:
                    raise _HttpError(404, {"error": "Subscription not found"})
            sub.last_used = time.time()
            new_token = secrets.token_urlsafe(24)
            self._tokens[new_token] = (sub.id, page.next_position)
            sub.tokens.append(new_token)
            if len(sub.tokens) > TOKENS_KEPT_PER_SUBSCRIPTION:
                for old in sub.tokens[:-TOKENS_KEPT_PER_SUBSCRIPTION]:
                    self._tokens.pop(old, None)
                del sub.tokens[:-TOKENS_KEPT_PER_SUBSCRIPTION]
            return page, new_token

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
            conn.settimeout(IDLE_TIMEOUT)
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
