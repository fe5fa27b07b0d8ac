"""What a failed request means, and what the user is told: retried, waited out, or fatal.

The runner hands every `ApiError` here. Each kind is classified by its type and its structured
fields (``reason``, ``status``, ``retry_after``), never by its text: a 401 waits for approval at
a pace that fits a person approving in the web interface, a lost subscription forgets the token
through the recorder and starts anew, a bad request or an unusable client certificate is fatal,
anything else is retried with backoff and counted by reason. A wrong host or port retries for ever,
and "Connection refused; retrying in 0.4 s" says nothing about the configuration: once the same
failure (the same kind, `Unavailable.reason` and ``answered``, never its text) has lasted
`PERSISTENT_AFTER` seconds, the retry line names the address and port tried and the fix. This
module decides and tells; it never writes to stdout and never touches the state file itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from kata_events import logs
from kata_events.backoff import Backoff
from kata_events.config.urls import format_fingerprint
from kata_events.exits import ExitStatus
from kata_events.source import errors
from kata_events.source.api import EventsClient
from kata_events.state.store import StateError
from kata_events.stopping import Stop

if TYPE_CHECKING:
    from kata_events.stats import Stats
    from kata_events.status_record import Health

#: After the first 401, retried this often while an administrator is likely approving right now...
UNAUTHORIZED_RETRY_FRESH = 5.0
#: ...for this long; then at the slower pace below: approval is a human step in the web interface.
UNAUTHORIZED_FRESH_FOR = 300.0
UNAUTHORIZED_RETRY = 30.0
#: The 401 explanation is repeated this often while approval is still missing.
UNAUTHORIZED_REMIND = 600.0
#: A failure repeated unchanged for this long is no longer a blip: the retry line says the fix.
PERSISTENT_AFTER = 180.0


class RepeatedFault:
    """Tracks how long requests have been failing the same way (the same kind, reason, answer)."""

    def __init__(self) -> None:
        self._kind: Optional[Tuple[str, str, bool]] = None
        self._since = 0.0

    def seen(self, exc: errors.ApiError, now: float) -> float:
        """Note a failure; return for how long it has lasted when over `PERSISTENT_AFTER`, else 0."""
        kind = (type(exc).__name__, exc.reason, getattr(exc, "answered", True))
        if kind != self._kind:
            self._kind, self._since = kind, now
        lasted = now - self._since
        return lasted if lasted >= PERSISTENT_AFTER else 0.0

    def clear(self) -> None:
        self._kind = None  # an answer came: the next failure starts a new count


def persistent_advice(exc: errors.ApiError, urls: Sequence[str], lasted: float) -> str:
    """The sentence added to a retry line (ending in "; ") for a failure lasting ``lasted`` s."""
    head = f"failing the same way for {lasted / 60:.0f} min"
    if exc.reason == "http_error":
        return (
            f"{head}: the Central Node answers, with errors; check its health in its web interface "
            "(kata-events retries until it recovers); "
        )
    if not getattr(exc, "answered", True):
        addresses = ", ".join(f"{parts.hostname} port {parts.port or 443}" for parts in map(urlsplit, urls))
        return (
            f"{head}: nothing usable answers at {addresses}: check the address and port in "
            "url, that the Central Node is up, and that firewalls let this host through; "
            "`kata-events check` (same options as run) tests DNS, TCP and TLS step by step; "
        )
    return f"{head}: `kata-events check` (same options as run) tests each step and names the fix; "


@dataclass
class Failures:
    """Classifies failed requests, tells the user, and waits before the next try."""

    client: EventsClient
    stats: Stats
    stop: Stop
    health: Optional[Health]
    state_file: Path
    #: Forgets the lost subscription's token (through the recorder).
    forget: Callable[[], None]
    clock: Callable[[], float] = time.time
    backoff: Backoff = field(default_factory=Backoff)
    faults: RepeatedFault = field(default_factory=RepeatedFault)
    #: Whether the server has answered a request of this process: a refusal after that is
    #: about the token, since nothing else in the request changed.
    answered: bool = False
    _unauthorized_since: Optional[float] = field(default=None, init=False)
    _unauthorized_told: float = field(default=0.0, init=False)
    _tls_files_told: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        #: How a wait before the next try is done (tests replace it).
        self.sleep: Callable[[float], object] = self.stop.sleep

    def answer(self) -> None:
        """The server answered: the failures are over (and an approval, if one was awaited, came)."""
        self.answered = True
        if self._unauthorized_since is not None:
            logs.emit("approved", "the Central Node accepts this external system now")
            self._unauthorized_since = None

    def succeeded(self) -> None:
        """A page went through: backoff and the repeated-fault memory start afresh."""
        self.backoff.reset()
        self.faults.clear()
        self.stats.up = True

    def report_tls_files(self) -> None:
        """Say once why renewed certificate files are not in use yet (see `EventsClient`)."""
        problem = getattr(self.client, "tls_files_problem", None)
        if problem and problem != self._tls_files_told:
            logs.emit(
                "tls_files_changed",
                f"the certificate, key or CA files changed but cannot be used yet ({problem}); "
                "connections keep the last good files and will try the new ones again",
                reason=problem,
            )
        self._tls_files_told = problem

    def handle(self, exc: errors.ApiError) -> Optional[Tuple[ExitStatus, str]]:
        """Log a failed request and wait before the next; returns (exit code, fatal message) only
        for fatal ones (the message "" when the failure was logged already)."""
        if isinstance(exc, errors.BadRequest):
            self.stop.end("bad request")
            logs.emit(
                "bad_request",
                f"the Central Node rejected the request: {exc}. Check the filter and "
                "max_events / max_timeout, then restart",
                reason=str(exc),
                filter=self.client.filter,
            )
            return ExitStatus.CONFIG, ""
        if isinstance(exc, errors.ClientTlsError):
            self.stop.end("client certificate")
            logs.emit("client_certificate", str(exc))
            return ExitStatus.CONFIG, ""
        if isinstance(exc, errors.Unauthorized):
            self.stats.up = False
            if self.health is not None:
                refused = f"HTTP 401: external system {self.client.external_system_id} is not approved"
                self.health.update(state="refused", reason=refused)
            self.sleep(self.unauthorized(exc))
            return None
        if isinstance(exc, errors.TokenRefused) and exc.status != 414 and not self.answered:
            # The first request of this run: a wrong URL or parameter is as likely as the token.
            return ExitStatus.CONFIG, (
                f"{exc}. If the server names the token, move the state file {self.state_file} away "
                "to start a new subscription; otherwise check url, max_events and max_timeout"
            )
        if isinstance(exc, (errors.SubscriptionLost, errors.TokenRefused)):
            why = "the Central Node no longer knows our continuation token (Subscription not found)"
            if isinstance(exc, errors.TokenRefused):
                why = f"the Central Node refused our continuation token ({exc})"
            if self.health is not None:
                self.health.update(subscription_lost_at=self.health.clock(), reason=why)
            logs.emit(
                "subscription_lost",
                f"{why}: starting a new subscription; events between the last delivered page and "
                "now may have been skipped",
                url=self.client.url,
                status=getattr(exc, "status", 404),
                reason=str(exc),
            )
            try:
                self.forget()
            except StateError as exc:
                # The saved token is the lost one: a restart gets the same 404 and starts anew too.
                logs.emit("state", f"cannot forget the lost token: {exc}", level="WARNING")
            self.sleep(self.backoff.next_delay())
            return None
        self.stats.retries += 1
        self.stats.retry_reasons[exc.reason] = self.stats.retry_reasons.get(exc.reason, 0) + 1
        self.stats.up = False
        if self.health is not None:
            self.health.update(state="failing", reason=str(exc))
        retry_after = exc.retry_after if isinstance(exc, errors.Unavailable) else None
        delay = self.backoff.next_delay(retry_after)
        lasting = self.faults.seen(exc, self.clock())
        if isinstance(exc, errors.TlsVerifyFailed):
            fp = exc.server_fingerprint
            how = "trust its CA with ca_file, or pin its certificate with pin_sha256"
            if fp:
                trust = f'trust it with pin_sha256 = "{fp}" (SHA-256 {format_fingerprint(fp)})'
                how = f"if this is your Central Node, {trust} or with ca_file"
            logs.emit(
                "tls_verify_failed",
                f"{exc}; {how}; retrying in {delay:.1f} s",
                url=self.client.url,
                server_fingerprint=fp,
                delay=round(delay, 1),
            )
        elif isinstance(exc, errors.BadResponse):
            logs.emit(
                "bad_response",
                f"{exc}; the page is not committed, retrying in {delay:.1f} s",
                excerpt=exc.excerpt,
                delay=round(delay, 1),
            )
        else:
            advice = persistent_advice(exc, self.client.urls, lasting) if lasting else ""
            logs.emit(
                "retry",
                f"{exc}; {advice}retrying in {delay:.1f} s",
                delay=round(delay, 1),
                retry_after=retry_after,
                attempt=self.backoff.attempt,
            )
        self.sleep(delay)
        return None

    def unauthorized(self, exc: errors.Unauthorized) -> float:
        """Log a 401 (in full at first, then as a reminder); return the delay before the next try."""
        now = time.monotonic()
        first = self._unauthorized_since is None
        if first:
            self._unauthorized_since = now
        waited = now - (self._unauthorized_since or now)
        delay = UNAUTHORIZED_RETRY_FRESH if waited < UNAUTHORIZED_FRESH_FOR else UNAUTHORIZED_RETRY
        level, fp = "DEBUG", None
        message = "still waiting for approval of this external system"
        if first or now - self._unauthorized_told >= UNAUTHORIZED_REMIND:
            self._unauthorized_told, level = now, None
            from kata_events.certs import file_fingerprint  # cryptography: only here

            fp = file_fingerprint(self.client.cert)
            shown = f"{format_fingerprint(fp)}" if fp else "(cannot read the certificate)"
            ids = f"external system id {self.client.external_system_id}, certificate SHA-256 {shown}"
            if first:
                message = (
                    "the Central Node does not accept this external system yet (HTTP 401). An "
                    "administrator must approve it in the Central Node web interface, section "
                    f"External systems: {ids}. A new certificate needs a new approval. If it is "
                    "approved already, compare the id and fingerprint shown there with these: a "
                    "mistyped external_system_id looks exactly like a missing approval. Retrying "
                    f"every {UNAUTHORIZED_RETRY_FRESH:.0f} s for {UNAUTHORIZED_FRESH_FOR / 60:.0f} "
                    f"min, then every {UNAUTHORIZED_RETRY:.0f} s"
                )
            else:
                message = (
                    f"still HTTP 401 after {waited / 60:.0f} min. If the external system was "
                    "approved, compare the id and fingerprint approved in the Central Node web "
                    f"interface (External systems) with this one's: {ids}. A mistyped "
                    "external_system_id or another certificate looks exactly like a missing "
                    f"approval. Retrying every {delay:.0f} s"
                )
        logs.emit(
            "unauthorized",
            message,
            level=level,
            external_system_id=self.client.external_system_id,
            fingerprint=fp,
            url=self.client.url,
        )
        return delay
