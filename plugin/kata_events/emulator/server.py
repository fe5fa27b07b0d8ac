"""The emulator itself: a mutual-TLS HTTP/1.1 server speaking the Central Node Events API.

Owns: its lifecycle (start, a stop that reaches every connection), its controls, the CA and
approvals (persisted in the state directory) and the queue of faults. The events, subscriptions
and long polling are `kata_events.emulator.store`'s; the connections `kata_events.emulator.wire`'s
(the standard library's `ThreadingHTTPServer`); what each request gets, faults played included,
`kata_events.emulator.answering`'s.

Never writes to stdout; it reports through the ``kata_events.emulator`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from kata_events.config.urls import format_fingerprint, normalize_fingerprint
from kata_events.emulator import certs
from kata_events.emulator.answering import (
    EVENTS_PATH_PREFIX,
    HUGE_TOKEN,
    MAX_TIMEOUT_LIMIT,
    ODD_TOKEN,
    Answering,
    _HttpError,
    _json_bytes,
    parse_iso_duration,
)
from kata_events.emulator.anycert import accept_any_client_certificate
from kata_events.emulator.events import EventFactory
from kata_events.emulator.faults import Fault, FaultQueue
from kata_events.emulator.store import EventStore, _Subscription
from kata_events.emulator.wire import _Server
from kata_events.options import parse_listen
from kata_events.private_file import write_private_file

__all__ = ["HUGE_TOKEN", "ODD_TOKEN", "Emulator", "default_state_dir", "parse_iso_duration"]

log = logging.getLogger("kata_events.emulator")


def default_state_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """Where the emulator keeps its CA and approvals unless told: ``emulator`` in the directory
    `run` keeps its tokens in (``$XDG_STATE_HOME/kata-events``, else ``~/.local/state/kata-events``)."""
    from kata_events.paths import state_home

    return state_home(os.environ if environ is None else environ) / "emulator"


#: How long a connection may sit idle between requests.
IDLE_TIMEOUT = 600.0
ACCEPT_POLL = 0.1
STOP_JOIN = 0.5


class Emulator(Answering, EventStore):
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
                pairs = [(external_system_id, normalize_fingerprint(fingerprint))]
            else:
                pairs = [pair for pair in self._pending if pair[0] == external_system_id]
            now = time.time()
            for pair in pairs:
                self._pending.pop(pair, None)
                self._approved[pair] = now
            self._save_approvals_locked()
        for ext_id, fp in pairs:
            log.info("approved external system %s with certificate %s", ext_id, format_fingerprint(fp))
        return [{"external_system_id": e, "fingerprint": f} for e, f in pairs]

    def revoke(self, external_system_id: str, fingerprint: Optional[str] = None) -> List[Dict[str, str]]:
        """Withdraw the approval of the id (one certificate, or all of them)."""
        normalized = normalize_fingerprint(fingerprint) if fingerprint is not None else None
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
            log.info("revoked external system %s with certificate %s", ext_id, format_fingerprint(fp))
        return [{"external_system_id": e, "fingerprint": f} for e, f in pairs]

    def is_approved(self, external_system_id: str, fingerprint: str) -> bool:
        with self._lock:
            return (external_system_id, normalize_fingerprint(fingerprint)) in self._approved

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
                    pair = (str(item["external_system_id"]), normalize_fingerprint(item["fingerprint"]))
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
        write_private_file(self.approvals_file, _json_bytes(data) + b"\n")

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
                    format_fingerprint(fingerprint),
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
                format_fingerprint(fingerprint),
                self.ca_file,
                approve_url,
            )
        raise _HttpError(401, {"error": "Unauthorized"})
