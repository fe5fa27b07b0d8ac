"""The main loop: fetch a page, deliver its lines, commit its token once delivered; retry the rest.

Flow is one way: the API client produces pages, the `Delivery` writes their lines and decides when
they are taken, and only then does the token store commit the page's token. The loop never imports
`requests`; it reacts to the few exceptions of `kata_events.source.errors`. Nothing transient ends it:
unavailability, bad bodies and untrusted servers are retried with backoff, a 401 waits for approval,
and a disk that stops taking the state file or stdout mid-run pauses fetching until it works again
(`kata_events.delivery.disk_faults`).

Resuming inside a page: the state holds a delivery point (a token and how many events of its
answer were delivered, with their digest). The first request asks again with that token; when the
first events of the answer hash to the digest they are skipped, exactly those, and delivery goes on
after them. When they do not (the server answered with other events, or fewer), nothing is
skipped: the answer is asked for again and delivered whole, and a warning says why. The same
check lets a page retried after a broken transfer skip what this process already wrote.

Stopping is one state (`kata_events.stopping.Stop`), shared with the client and the delivery.
Signal handlers only record the request in it; nothing is raised into a blocked call. Every wait
looks at it between short slices: the hand-over of the request's answer and of each part of the
body (which also carry the overall deadline that abandons a trickling server), the writer waiting
for room, the retry sleep.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from kata_events import __version__, logs
from kata_events.backoff import Backoff
from kata_events.delivery.policies import ConsumerGone, Delivery, OutputFailed, WriteStopped
from kata_events.exits import ExitStatus
from kata_events.source.api import EventsClient, Page, file_fingerprint
from kata_events.source.errors import (
    ApiError,
    BadRequest,
    BadResponse,
    ClientTlsError,
    Interrupted,
    SubscriptionLost,
    TlsVerifyFailed,
    TokenRefused,
    Unauthorized,
    Unavailable,
)
from kata_events.source.fault_advice import RepeatedFault, persistent_advice
from kata_events.source.tokens import token_problem
from kata_events.state.progress import Point, joined, new_hasher
from kata_events.state.store import StateError, TokenStore, short_token
from kata_events.stopping import Stop

if TYPE_CHECKING:
    from kata_events.metrics import Snapshot
    from kata_events.status_record import Health

#: After the first 401, retried this often while an administrator is likely approving right now...
UNAUTHORIZED_RETRY_FRESH = 5.0
#: ...for this long; then at the slower pace below: approval is a human step in the web interface.
UNAUTHORIZED_FRESH_FOR = 300.0
UNAUTHORIZED_RETRY = 30.0
#: The 401 explanation is repeated this often while approval is still missing.
UNAUTHORIZED_REMIND = 600.0
#: A lag warning is repeated at most this often while the lag stays above the threshold.
LAG_WARN_EVERY = 300.0
#: In --once mode the server need not hold the request open: we only drain what is there.
ONCE_MAX_TIMEOUT = 1
#: How long a clean stop waits for the tail: in ack mode for the shipper's STOP (and the
#: acknowledgements before it), inside rsyslog's 200 ms closeTimeout; elsewhere for the pipe's drain.
FINISH_WAIT = 0.1
#: --once waits this long at most for the reader to take the last page before its last commit.
ONCE_FINISH_WAIT = 10.0
#: The server keeps events at most this long.
RETENTION_SECONDS = 7200

_TIMESTAMP = re.compile(rb'"Timestamp"\s*:\s*"?(\d{9,19})')


def retry_reason(exc: ApiError) -> str:
    """The ``reason`` label of a retried failure: tls, bad_response, or `Unavailable.reason`
    (timeout, http_error, connection)."""
    if isinstance(exc, TlsVerifyFailed):
        return "tls"
    if isinstance(exc, BadResponse):
        return "bad_response"
    return exc.reason if isinstance(exc, Unavailable) else "connection"


class StopRequested(BaseException):
    """Unwinds the loop from inside a page once it is to stop (never raised by a signal handler)."""


class ResumeMismatch(Exception):
    """The answer to the resume token does not start with the events recorded as delivered."""


def event_age(line: bytes, now: float) -> Optional[float]:
    """Seconds since an event's ``Timestamp`` (epoch seconds, ms or µs), or None if it has none."""
    match = _TIMESTAMP.search(line)
    if not match:
        return None
    value = int(match.group(1))
    if value > 10**17:  # nanoseconds
        value_s = value / 1e9
    elif value > 10**14:  # microseconds, what the Central Node sends
        value_s = value / 1e6
    elif value > 10**11:  # milliseconds
        value_s = value / 1e3
    else:
        value_s = float(value)
    return max(0.0, now - value_s)


@dataclass
class Stats:
    """Counters for the periodic stats line and the final one."""

    started: float = field(default_factory=time.monotonic)
    events: int = 0
    pages: int = 0
    bytes: int = 0
    retries: int = 0
    skipped: int = 0
    #: Event lines written to stdout (the ledger counts bytes or lines, depending on the mode).
    written: int = 0
    lag_seconds: Optional[float] = None
    #: Retries by reason (the metric's label): see `retry_reason`.
    retry_reasons: Dict[str, int] = field(default_factory=dict)
    #: Whether the last answer was full: the server has more, the stream is behind.
    behind: bool = False


class Runner:
    """Runs the fetch → deliver → commit loop until stopped; `run()` returns the exit code."""

    def __init__(
        self,
        *,
        client: EventsClient,
        store: TokenStore,
        delivery: Delivery,
        once: bool = False,
        lag_warning: float = 3600.0,
        stats_interval: float = 60.0,
        warn_line_bytes: int = 0,
        stop_after: Optional[int] = None,
        clock: Callable[[], float] = time.time,
        health: Optional[Health] = None,
        stop: Optional[Stop] = None,
    ) -> None:
        self.client = client
        self.store = store
        self.delivery = delivery
        self.once = once
        self.lag_warning = lag_warning
        self.stats_interval = stats_interval
        self.warn_line_bytes = warn_line_bytes
        self.stop_after = stop_after
        self.clock = clock
        #: The status record `kata-events status` reads (None: not kept, e.g. in tests).
        self.health = health
        #: Whether the Central Node answers (the up metric): False while refused or failing.
        self.up = False
        self.faults = RepeatedFault()
        self.backoff = Backoff()
        self.stats = Stats()
        self.token: Optional[str] = None
        #: The run's one stop state, shared with the client and the delivery.
        self.stop = stop if stop is not None else delivery.stop
        #: Set by the main thread once the loop has ended: wakes the stats thread.
        self._ended = threading.Event()
        #: The point to resume from: the next answer to its token skips its events if they match.
        self.resume: Optional[Point] = None
        self._unauthorized_since: Optional[float] = None
        self._unauthorized_told = 0.0
        self._tls_files_told: Optional[str] = None
        self._lag_warned = 0.0
        self._line_warned = False
        # Whether the server has answered a request of this process: a refusal after that is about
        # the token, since nothing else in the request changed.
        self._answered = False
        self._failure: Optional[Tuple[ExitStatus, str]] = None
        delivery.on_failure = lambda exc: self.fail(exc)
        self._page_lines = 0
        self._limit_reached = False

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads (it only records)."""
        self.stop.ask(reason)

    def _resume_from_written(self) -> None:
        """A page failed mid-body: what this process already wrote of it need not be written again."""
        written = self.delivery.written_point()
        if written is not None and written.token == self.token and written.events:
            self.resume = written

    def fail(self, exc: Exception) -> None:
        """A background thread hit an error the process cannot go on with: stop with its code."""
        code = getattr(exc, "exit_code", ExitStatus.CANT_CREATE)
        self._failure = (ExitStatus(code), str(exc))
        self.stop.ask("error")

    @property
    def stopping(self) -> bool:
        return self.stop.stopping

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless asked to stop."""
        self.stop.sleep(seconds)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """The loop. Returns an `ExitStatus` value; transient faults never end it."""
        token, why = self.store.load()
        if why:
            stored = self.store.stored() if token is None else None
            if stored is not None and stored.filter != self.client.filter:
                logs.emit(
                    "filter_changed",
                    why,
                    old_filter=stored.filter,
                    new_filter=self.client.filter,
                    state_file=str(self.store.path),
                )
            else:
                # A dropped token means a new subscription: events since the last run may be lost.
                level = "WARNING" if token is None else None
                logs.emit("state", why, level=level, state_file=str(self.store.path))
        problem = token_problem(token) if token is not None else None
        if problem:
            logs.emit(
                "state",
                f"the saved continuation token {short_token(token)} cannot be used ({problem}); no "
                "server would accept it, so a new subscription starts: events since the last run "
                "may have been skipped",
                level="WARNING",
                state_file=str(self.store.path),
            )
            token = None
        self.token = token
        if token is None:
            logs.emit(
                "subscription_new",
                "no saved continuation token: the first request creates a new subscription",
                filter=self.client.filter,
            )
            point, warnings = self.store.first_page_point()
            for warning in warnings:
                logs.emit("progress_record", warning, state_file=str(self.store.path))
            if point is not None:
                # The last run was killed inside the first answer of its new subscription: the
                # new one may answer with the same events, and the digest tells.
                self.delivery.start_from(point)
                self.resume = point
        else:
            point, warnings = self.store.resume_point()
            for warning in warnings:
                logs.emit("progress_record", warning, state_file=str(self.store.path))
            if point is not None and point.token and token_problem(point.token):
                point = Point(token)
            if point is not None and point.token:
                self.token = point.token
                self.delivery.start_from(point)
                self.resume = point if point.events else None
        stats_thread = self._start_stats_thread()
        if self.health is not None:
            self.health.start()
        code = ExitStatus.OK
        gone = False
        try:
            code = self._loop()
        except StopRequested:
            pass
        except ConsumerGone as exc:
            logs.emit("consumer_gone", f"the reader of stdout went away ({exc}); stopping")
            gone = True
        except OutputFailed as exc:
            self._failure = (ExitStatus.IO_ERROR, f"{exc}: nothing after the last commit is lost")
        except StateError as exc:
            self._failure = (ExitStatus(exc.exit_code), str(exc))
        finally:
            drained = self.once and self.stop.reason in ("", "caught up")
            self.stop.end()
            self._ended.set()
            try:
                self.delivery.finish(
                    timeout=ONCE_FINISH_WAIT if drained else FINISH_WAIT,
                    clean=drained,
                    interrupted=lambda: self.stop.asked,
                )
            except ConsumerGone:
                pass
            except OutputFailed as exc:
                self._failure = self._failure or (
                    ExitStatus.IO_ERROR,
                    f"{exc}: nothing after the last commit is lost",
                )
            except StateError as exc:
                self._failure = self._failure or (ExitStatus(exc.exit_code), str(exc))
            if self.delivery.health.paused:
                self.delivery.retry()
            if self.delivery.health.paused:
                logs.emit(
                    "disk_fault",
                    f"stopping while paused ({self.delivery.health.cause()}): the state file keeps "
                    "the last saved token, and what followed it is sent again at the next start",
                    level="WARNING",
                )
            self.delivery.close()
            self.client.close()
            if stats_thread is not None:
                stats_thread.join(timeout=1.0)
            if gone:
                self.stop.end("consumer gone")
            if self._failure is not None:
                code, message = self._failure
                self.stop.reason = "error"
                logs.emit("fatal", message, exit_code=int(code), reason="error")
            self._emit_stats("stop", final=True, exit_code=int(code))
            self.up = False
            if self.health is not None:
                self.health.stopped(self.stop.reason or "finished")
        return int(code)

    def _loop(self) -> ExitStatus:
        while not self.stop.stopping:
            self.delivery.wait_for_room(lambda: self.stop.stopping)
            if self.stop.stopping:
                break
            if self.delivery.health.paused:
                # No new page while the last one cannot be saved: retry that with backoff instead.
                if not self.stop.sleep(self.delivery.health.next_delay()):
                    self.delivery.retry()
                continue
            try:
                count = self._one_page()
            except (StopRequested, Interrupted):
                break
            except ApiError as exc:
                self._resume_from_written()
                code = self._handle_failure(exc)
                if code is not None:
                    return code
                continue
            if self.once and count < self.client.max_events:
                logs.emit("caught_up", "caught up with the server (--once): exiting")
                self.stop.end("caught up")
                break
        return ExitStatus.OK

    def _one_page(self) -> int:
        """Fetch, deliver and end one page; returns its number of events, skipped ones included."""
        started = time.monotonic()
        try:
            page = self.client.fetch(self.token, ONCE_MAX_TIMEOUT if self.once else None)
        finally:
            self._report_tls_files()
        self._answered = True
        # Kept until the skip has checked the answer: a body abandoned or broken while skipping
        # leaves the point for the retry (else it would send all the skipped events again).
        resume = self.resume
        if resume is not None and resume.token != self.token:
            resume = self.resume = None
        with page:
            if self._unauthorized_since is not None:
                logs.emit("approved", "the Central Node accepts this external system now")
                self._unauthorized_since = None
            try:
                last_line = self._deliver(page, resume)
            except ResumeMismatch as exc:
                self.resume = None
                logs.emit(
                    "resume_mismatch",
                    f"the server's answer to {self._asked_with()} does not start with the "
                    f"{resume.events if resume else 0} events recorded as delivered ({exc}): "
                    "skipping nothing, the whole answer is delivered",
                    events=resume.events if resume else 0,
                    token=short_token(self.token),
                    reason=str(exc),
                )
                page = None
            if page is not None:
                new_token = page.finish()
        if page is None:
            # The events read while checking were not written: ask again, deliver it all.
            return self._one_page()
        count = page.event_count
        self.delivery.end_page(new_token)
        self.delivery.check_ack_timeout()
        self.token = new_token
        self.backoff.reset()
        self.faults.clear()
        self.up = True
        self._account(page, count, last_line, time.monotonic() - started)
        return page.element_count

    def _skip(self, batches: Iterator[List[bytes]], resume: Point) -> List[bytes]:
        """Read the answer's first ``resume.events`` events and check their digest; the rest of the
        batch they end in is returned. Raises ResumeMismatch when they differ or are fewer."""
        hasher = new_hasher()
        seen = 0
        rest: List[bytes] = []
        while seen < resume.events:
            batch = self._next_batch(batches)
            if batch is None:
                raise ResumeMismatch(f"it holds only {seen} events")
            take = batch[: resume.events - seen]
            hasher.update(joined(take))
            seen += len(take)
            rest = batch[len(take) :]
        if hasher.hexdigest() != resume.digest:
            raise ResumeMismatch("their digest differs")
        self.resume = None
        self.delivery.begin_page(self.token, seen, hasher)
        logs.emit(
            "resume",
            f"skipping the first {seen} events of the answer to {self._asked_with()}: "
            "they were delivered before",
            events=seen,
            token=short_token(self.token),
        )
        return rest

    def _asked_with(self) -> str:
        """What the current request was asked with, for messages about its answer."""
        if self.token is None:
            return "the first request of a new subscription (no token)"
        return f"token {short_token(self.token)}"

    def _deliver(self, page: Page, resume: Optional[Point] = None) -> Optional[bytes]:
        batches = page.batches()
        self._page_lines = 0
        last: Optional[bytes] = None
        first: Optional[List[bytes]] = None
        if resume is not None:
            first = self._skip(batches, resume)
        else:
            self.delivery.begin_page(self.token)
        while True:
            if first is not None:
                batch: Optional[List[bytes]] = first
                first = None
                if not batch:
                    continue
            else:
                batch = self._next_batch(batches)
                self._report_skipped(page)
            if batch is None:
                return last
            if self.stop_after is not None:
                batch = self._limit(batch)
            # Not interruptible: the writer watches the stop flag itself, so that a stop neither
            # loses the count of a write under way nor cuts a line it can still finish.
            try:
                self.delivery.write(batch)
            except WriteStopped:
                raise StopRequested(self.stop.reason) from None
            self.stats.written += len(batch)
            if self._limit_reached:
                self._stop_after_shown()
            last = batch[-1]
            if self.warn_line_bytes and not self._line_warned:
                self._check_line_lengths(batch)

    def _report_tls_files(self) -> None:
        """Say once why renewed certificate files are not in use yet (see `EventsClient`)."""
        problem = self.client.tls_files_problem
        if problem and problem != self._tls_files_told:
            logs.emit(
                "tls_files_changed",
                f"the certificate, key or CA files changed but cannot be used yet ({problem}); "
                "connections keep the last good files and will try the new ones again",
                level="WARNING",
                reason=problem,
            )
        self._tls_files_told = problem

    def _next_batch(self, batches: Iterator[List[bytes]]) -> Optional[List[bytes]]:
        """The next batch of the body (the page's hand-over bounds the wait, skipping or not)."""
        return next(batches, None)

    def _report_skipped(self, page: Page) -> None:
        for skipped in page.take_skipped():
            self.stats.skipped += 1
            logs.emit(
                "event_skipped",
                f"element {skipped.index} of the page's events ({skipped.size} bytes from byte "
                f"{skipped.offset} of the body) is {skipped.reason}: skipped, the rest of the page is "
                "delivered; if such events are expected, raise max_event_bytes",
                index=skipped.index,
                offset=skipped.offset,
                bytes=skipped.size,
                reason=skipped.reason,
                limit=self.client.max_event_bytes,
                url=page.base_url,
            )

    def _limit(self, batch: List[bytes]) -> List[bytes]:
        """Cut the batch at ``stop_after`` lines in all (the demo's --events).

        The stop itself comes after the cut batch is written (`_stop_after_shown`): a stop flag set
        before the write would make the writer leave those lines unwritten.
        """
        assert self.stop_after is not None
        left = self.stop_after - (self.stats.events + self._page_lines)
        if left <= len(batch):
            self._limit_reached = True
            batch = batch[: max(0, left)]
        self._page_lines += len(batch)
        return batch

    def _stop_after_shown(self) -> None:
        """``stop_after`` lines are written: count the unfinished page's lines and stop."""
        self.stats.events += self._page_lines
        self.stats.pages += 1
        self.stop.end(f"{self.stop_after} events shown")
        raise StopRequested(self.stop.reason)

    def _check_line_lengths(self, batch: List[bytes]) -> None:
        longest = max(len(line) for line in batch) + 1
        if longest > self.warn_line_bytes:
            self._line_warned = True
            logs.emit(
                "line_too_long",
                f"an event line of {longest} bytes exceeds warn_line_bytes={self.warn_line_bytes}: "
                "raise your shipper's line limit (events are never cut); this is said once",
                bytes=longest,
                limit=self.warn_line_bytes,
            )

    def _account(self, page: Page, count: int, last_line: Optional[bytes], seconds: float) -> None:
        stats = self.stats
        stats.pages += 1
        stats.events += count
        stats.bytes += page.bytes_read
        now = self.clock()
        newest = event_age(last_line, now) if last_line is not None else None
        if newest is not None:
            stats.lag_seconds = newest
        elif count == 0:
            stats.lag_seconds = 0.0
        stats.behind = count >= self.client.max_events
        if self.health is not None:
            self.health.page(count, stats.behind, None if newest is None else now - newest)
        logs.emit(
            "page",
            f"page of {logs.counted(count, 'event')} delivered",
            events=count,
            bytes=page.bytes_read,
            seconds=round(seconds, 3),
            url=page.base_url,
            lag_seconds=None if stats.lag_seconds is None else round(stats.lag_seconds, 1),
        )
        lag = stats.lag_seconds
        if lag is not None and lag > self.lag_warning and now - self._lag_warned >= LAG_WARN_EVERY:
            self._lag_warned = now
            logs.emit(
                "lag",
                f"falling behind: the newest event delivered is {lag / 60:.0f} min old; the Central "
                f"Node keeps events for at most {RETENTION_SECONDS // 3600} h, older ones are lost",
                lag_seconds=round(lag, 1),
                limit=self.lag_warning,
                full_page=count >= self.client.max_events,
            )
        elif self._lag_warned and lag is not None and lag <= self.lag_warning:
            self._lag_warned = 0.0
            logs.emit(
                "lag_recovered",
                f"caught up: the newest event delivered is {lag:.0f} s old",
                lag_seconds=round(lag, 1),
                limit=self.lag_warning,
            )

    # -- failures ---------------------------------------------------------------------------------

    def _handle_failure(self, exc: ApiError) -> Optional[ExitStatus]:
        """Log a failed request and wait before the next; returns an exit code only for fatal ones."""
        if isinstance(exc, BadRequest):
            self.stop.end("bad request")
            logs.emit(
                "bad_request",
                f"the Central Node rejected the request: {exc.reason}. Check the filter and "
                "max_events / max_timeout, then restart",
                reason=exc.reason,
                filter=self.client.filter,
            )
            return ExitStatus.CONFIG
        if isinstance(exc, ClientTlsError):
            self.stop.end("client certificate")
            logs.emit("client_certificate", str(exc))
            return ExitStatus.CONFIG
        if isinstance(exc, Unauthorized):
            self.up = False
            if self.health is not None:
                self.health.refused(
                    f"HTTP 401: external system {self.client.external_system_id} is not approved"
                )
            self._sleep(self._unauthorized(exc))
            return None
        if isinstance(exc, TokenRefused) and exc.status != 414 and not self._answered:
            # The first request of this run: a wrong URL or parameter is as likely as the token.
            self._failure = (
                ExitStatus.CONFIG,
                f"{exc}. If the server names the token, move the state file {self.store.path} away "
                "to start a new subscription; otherwise check url, max_events and max_timeout",
            )
            return ExitStatus.CONFIG
        if isinstance(exc, (SubscriptionLost, TokenRefused)):
            if isinstance(exc, TokenRefused):
                why = f"the Central Node refused our continuation token ({exc})"
            else:
                why = "the Central Node no longer knows our continuation token (Subscription not found)"
            if self.health is not None:
                self.health.subscription_lost(why)
            logs.emit(
                "subscription_lost",
                f"{why}: starting a new subscription; events between the last delivered page and "
                "now may have been skipped",
                url=self.client.url,
                status=getattr(exc, "status", 404),
                reason=str(exc),
            )
            try:
                self.delivery.forget_token(self.store.clear)
            except StateError as exc:
                # The saved token is the lost one: a restart gets the same 404 and starts anew too.
                logs.emit("state", f"cannot forget the lost token: {exc}", level="WARNING")
            self.token = None
            self._sleep(self.backoff.next_delay())
            return None
        self.stats.retries += 1
        reason = retry_reason(exc)
        self.stats.retry_reasons[reason] = self.stats.retry_reasons.get(reason, 0) + 1
        self.up = False
        if self.health is not None:
            self.health.failing(str(exc))
        retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
        delay = self.backoff.next_delay(retry_after)
        lasting = self.faults.seen(str(exc), self.clock())
        if isinstance(exc, TlsVerifyFailed):
            from kata_events.certs import format_fingerprint  # cryptography: only for this message

            fp = exc.server_fingerprint
            how = (
                f'if this is your Central Node, trust it with pin_sha256 = "{fp}" '
                f"(SHA-256 {format_fingerprint(fp)}) or with ca_file"
                if fp
                else "trust its CA with ca_file, or pin its certificate with pin_sha256"
            )
            logs.emit(
                "tls_verify_failed",
                f"{exc}; {how}; retrying in {delay:.1f} s",
                url=self.client.url,
                server_fingerprint=fp,
                delay=round(delay, 1),
            )
        elif isinstance(exc, BadResponse):
            logs.emit(
                "bad_response",
                f"{exc}; the page is not committed, retrying in {delay:.1f} s",
                excerpt=exc.excerpt,
                delay=round(delay, 1),
            )
        else:
            advice = persistent_advice(str(exc), self.client.urls, lasting) if lasting else ""
            logs.emit(
                "retry",
                f"{exc}; {advice}retrying in {delay:.1f} s",
                delay=round(delay, 1),
                retry_after=retry_after,
                attempt=self.backoff.attempt,
            )
        self._sleep(delay)
        return None

    def _unauthorized(self, exc: Unauthorized) -> float:
        """Log a 401 (in full at first, then as a reminder); return the delay before the next try."""
        now = time.monotonic()
        first = self._unauthorized_since is None
        if first:
            self._unauthorized_since = now
        waited = now - (self._unauthorized_since or now)
        delay = UNAUTHORIZED_RETRY_FRESH if waited < UNAUTHORIZED_FRESH_FOR else UNAUTHORIZED_RETRY
        if first or now - self._unauthorized_told >= UNAUTHORIZED_REMIND:
            self._unauthorized_told = now
            from kata_events.certs import format_fingerprint  # cryptography: only for this message

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
                external_system_id=self.client.external_system_id,
                fingerprint=fp,
                url=self.client.url,
            )
        else:
            logs.emit(
                "unauthorized",
                "still waiting for approval of this external system",
                level="DEBUG",
                external_system_id=self.client.external_system_id,
                fingerprint=None,
                url=self.client.url,
            )
        return delay

    # -- stats ------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The metrics' values now (read from any thread: plain reads of counters)."""
        from kata_events.metrics import Snapshot

        s = self.stats
        ledger = self.delivery.ledger
        last_commit = self.health.record["last_commit"] if self.health is not None else None
        return Snapshot(
            events=s.events,
            bytes=s.bytes,
            pages=s.pages,
            retries=dict(s.retry_reasons),
            lag_seconds=(s.lag_seconds or 0.0) if s.behind else 0.0,
            last_commit=last_commit,
            unacknowledged=ledger.unacked if self.delivery.mode == "lines" else 0,
            up=self.up,
            version=__version__,
        )

    def _start_stats_thread(self) -> Optional[threading.Thread]:
        if not self.stats_interval or self.stats_interval <= 0:
            return None

        def tick() -> None:
            while not self._ended.wait(self.stats_interval):
                self._emit_stats("stats")
                self.delivery.check_ack_timeout()

        thread = threading.Thread(target=tick, name="stats", daemon=True)
        thread.start()
        return thread

    def _emit_stats(self, name: str, final: bool = False, exit_code: Optional[int] = None) -> None:
        s = self.stats
        ledger = self.delivery.ledger
        # Ack mode counts lines; the others count bytes (drain) or lines (terminal): shown only
        # where they are acknowledgements, so every field of the line is in lines.
        acked = self.delivery.mode == "lines"
        fields = dict(
            events=s.events,
            pages=s.pages,
            bytes=s.bytes,
            retries=s.retries,
            skipped=s.skipped,
            lag_seconds=None if s.lag_seconds is None else round(s.lag_seconds, 1),
            written=ledger.written if acked else s.written,
            acknowledged=ledger.taken_position if acked else None,
            unacknowledged=ledger.unacked if acked else None,
            committed_pages=self.delivery.committed_pages,
            uptime_seconds=round(time.monotonic() - s.started, 1),
        )
        counts = f"{logs.counted(s.events, 'event')} in {logs.counted(s.pages, 'page')}"
        if final:
            reason = self.stop.reason or "finished"
            message = f"stopped ({reason}): {counts}"
            logs.emit(name, message, reason=reason, exit_code=exit_code, **fields)
        else:
            message = counts + (f", {ledger.unacked} unacknowledged" if acked else "")
            logs.emit(name, message, **fields)
