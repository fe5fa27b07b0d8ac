"""The emulator itself: a mutual-TLS HTTP/1.1 server speaking the Central Node Events API.

Owns: its lifecycle (start, a stop that reaches every connection), the event store (backlog,
steady source computed lazily from the clock, manual additions, retention), approvals (persisted in
the state directory), subscriptions and their tokens, long polling and the queue of faults. The
connections are `kata_events.emulator.wire`'s (the standard library's `ThreadingHTTPServer`); what
each request gets, faults played included, is `kata_events.emulator.answering`'s.

Never writes to stdout; it reports through the ``kata_events.emulator`` logger.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from kata_events import certs
from kata_events.emulator.answering import (
    EVENTS_PATH_PREFIX,
    HUGE_TOKEN,
    MAX_TIMEOUT_LIMIT,
    ODD_TOKEN,
    Answering,
    _bad_request,
    _HttpError,
    _json_bytes,
    parse_iso_duration,
)
from kata_events.emulator.anycert import accept_any_client_certificate
from kata_events.emulator.events import EventFactory
from kata_events.emulator.faults import Fault, FaultQueue
from kata_events.emulator.filters import Filter, FilterSyntaxError, compile_filter
from kata_events.emulator.wire import _Server
from kata_events.options import parse_listen

__all__ = ["HUGE_TOKEN", "ODD_TOKEN", "Emulator", "default_state_dir", "parse_iso_duration"]

log = logging.getLogger("kata_events.emulator")


def default_state_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """Where the emulator keeps its CA and approvals unless told: ``emulator`` in the directory
    `run` keeps its tokens in (``$XDG_STATE_HOME/kata-events``, else ``~/.local/state/kata-events``)."""
    from kata_events.paths import state_home

    return state_home(os.environ if environ is None else environ) / "emulator"


#: How long a connection may sit idle between requests.
IDLE_TIMEOUT = 600.0
#: A client going back to the token of a page it delivered a few seconds ago (a stop on a pipe, the
#: settle time) asks again with a token up to hundreds of pages old when pages are small.
TOKENS_KEPT_PER_SUBSCRIPTION = 4096
ACCEPT_POLL = 0.1
STOP_JOIN = 0.5


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


class _Page:
    """The events chosen for one response: parallel lists of seq, timestamp and template."""

    def __init__(self, seqs: List[int], stamps: List[int], templates: List[int], next_position: int) -> None:
        self.seqs = seqs
        self.stamps = stamps
        self.templates = templates
        self.next_position = next_position

    def __len__(self) -> int:
        return len(self.seqs)


class Emulator(Answering):
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

    @property
    def idle_timeout(self) -> float:
        """`IDLE_TIMEOUT`, read when a connection starts (tests shorten it)."""
        return IDLE_TIMEOUT

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
