"""The main loop: fetch a page, deliver its lines, commit its token once delivered; retry the rest.

Flow is one way: the API client produces pages, the `Delivery` writes their lines and decides when
they are taken, and only then is the page's token committed. The loop never imports `requests`; it
reacts to the exceptions of `kata_events.source.errors`. Nothing transient ends it: failures are
retried with backoff, a 401 waits for approval, a failing disk pauses fetching
(`kata_events.delivery.disk_faults`).

Resuming inside a page: the state holds a delivery point (a token, how many events of its answer
were delivered, their digest). The first request asks again with that token; when the answer's
first events hash to the digest exactly those are skipped, otherwise nothing is skipped and a
warning says why. The same check lets a page retried after a broken transfer skip what this
process already wrote. Stopping is one state (`kata_events.stopping.Stop`): signal handlers only
record in it, and every wait looks at it between short slices.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Tuple

from kata_events import logs
from kata_events.delivery.policies import Delivery
from kata_events.delivery.writer import ConsumerGone, OutputFailed, WriteStopped
from kata_events.exits import ExitStatus
from kata_events.failures import Failures
from kata_events.source.api import EventsClient
from kata_events.source.errors import ApiError, Interrupted
from kata_events.source.pages import Page
from kata_events.source.tokens import token_problem
from kata_events.state.progress import Point, joined, new_hasher
from kata_events.state.store import StateError, TokenStore, short_token
from kata_events.stats import Reports

if TYPE_CHECKING:
    from kata_events.status_record import Health

#: In --once mode the server need not hold the request open: we only drain what is there.
ONCE_MAX_TIMEOUT = 1
#: How long a clean stop waits for the tail: in ack mode for the shipper's STOP (and the
#: acknowledgements before it), inside rsyslog's 200 ms closeTimeout; elsewhere for the pipe's drain.
FINISH_WAIT = 0.1
#: --once waits this long at most for the reader to take the last page before its last commit.
ONCE_FINISH_WAIT = 10.0


class ResumeMismatch(Exception):
    """The answer to the resume token does not start with the events recorded as delivered."""


def _fatal(exc: OutputFailed | StateError) -> Tuple[ExitStatus, str]:
    """The exit code and message of an output or state failure that ends the run."""
    lost = ": nothing after the last commit is lost" if isinstance(exc, OutputFailed) else ""
    return ExitStatus(exc.exit_code), f"{exc}{lost}"


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
    ) -> None:
        self.client = client
        self.store = store
        self.delivery = delivery
        self.once = once
        self.stop_after = stop_after
        self.health = health
        self.token: Optional[str] = None
        #: The run's one stop state, shared with the client and the delivery.
        self.stop = delivery.stop
        self.reports = Reports(
            delivery,
            max_events=getattr(client, "max_events", 0),
            max_event_bytes=getattr(client, "max_event_bytes", 0),
            lag_warning=lag_warning,
            stats_interval=stats_interval,
            warn_line_bytes=warn_line_bytes,
            clock=clock,
            health=health,
        )
        self.stats = self.reports.stats
        self.failures = Failures(
            client,
            self.stats,
            self.stop,
            health=health,
            state_file=getattr(store, "path", None),
            forget=self._forget_token,
            clock=clock,
        )
        #: Set once the loop has ended: wakes the stats thread.
        self._ended = threading.Event()
        #: The point to resume from: the next answer to its token skips its events if they match.
        self.resume: Optional[Point] = None
        self._failure: Optional[Tuple[ExitStatus, str]] = None
        # The page fetched and not yet accounted for: its bytes count when it is cut short.
        self._cut_page: Optional[Page] = None

    def _forget_token(self) -> None:
        """The subscription is lost: the next request starts a new one, and the state forgets it."""
        self.token = None
        self.delivery.recorder.clear(self.store.clear)

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
        if token is not None and (problem := token_problem(token)):
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
        # Without a token: how far the last run got into the first answer of its new subscription
        # (a point without a token); the new one may answer with the same events, the digest tells.
        point, warnings = self.store.first_page_point() if token is None else self.store.resume_point()
        for warning in warnings:
            logs.emit("progress_record", warning, state_file=str(self.store.path))
        if point is not None and point.token and token_problem(point.token):
            point = Point(token)
        if point is not None and (token is None or point.token):
            self.token = point.token
            self.delivery.recorder.start_from(point)
            self.resume = point if point.events else None
        stats_thread = self.reports.start(self._ended)
        if self.health is not None:
            self.health.start()
        code = ExitStatus.OK
        gone = False
        try:
            code = self._loop()
        except ConsumerGone as exc:
            logs.emit("consumer_gone", f"the reader of stdout went away ({exc}); stopping")
            gone = True
        except (OutputFailed, StateError) as exc:
            self._failure = _fatal(exc)
        finally:
            drained = self.once and self.stop.reason in ("", "caught up")
            self.stop.end()
            self._ended.set()
            try:
                self.delivery.finish(timeout=ONCE_FINISH_WAIT if drained else FINISH_WAIT, clean=drained)
            except ConsumerGone:
                pass
            except (OutputFailed, StateError) as exc:
                self._failure = self._failure or _fatal(exc)
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
            failed = self.delivery.failure
            if failed is not None and self._failure is None:
                self._failure = (ExitStatus(failed.exit_code), str(failed))
            if self._failure is not None:
                code, message = self._failure
                self.stop.reason = "error"
                logs.emit("fatal", message, exit_code=int(code), reason="error")
            self._count_cut_page()
            self.reports.stats_line("stop", final=True, exit_code=int(code), reason=self.stop.reason)
            self.stats.up = False
            if self.health is not None:
                self.health.stopped(self.stop.reason or "finished")
        return int(code)

    def _loop(self) -> ExitStatus:
        while not self.stop.stopping:
            self.delivery.wait_for_room()
            if self.stop.stopping:
                break
            if self.delivery.health.paused:
                # No new page while the last one cannot be saved: retry that with backoff instead.
                if not self.stop.sleep(self.delivery.health.next_delay()):
                    self.delivery.retry()
                continue
            try:
                count = self._one_page()
            except (WriteStopped, Interrupted):
                break
            except ApiError as exc:
                self._count_cut_page()
                # What this process already wrote of a page failed mid-body is not written again.
                written = self.delivery.written_point()
                if written is not None and written.token == self.token and written.events:
                    self.resume = written
                fatal = self.failures.handle(exc)
                if fatal is not None:
                    code, message = fatal
                    if message:
                        self._failure = (code, message)
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
            self.failures.report_tls_files()
        self.failures.answer()
        self._cut_page = page
        # Kept until the skip has checked the answer: a body abandoned or broken while skipping
        # leaves the point for the retry (else it would send all the skipped events again).
        resume = self.resume
        if resume is not None and resume.token != self.token:
            resume = self.resume = None
        with page:
            try:
                last_line = self._deliver(page, resume)
                new_token: Optional[str] = page.finish()
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
                new_token = None
        if new_token is None:
            # The events read while checking were not written: ask again, deliver it all.
            self._count_cut_page()
            return self._one_page()
        self.delivery.end_page(new_token)
        self.delivery.check_ack_timeout()
        self.token = new_token
        self.failures.succeeded()
        self._cut_page = None
        self.reports.account(page, page.event_count, last_line, time.monotonic() - started)
        return page.element_count

    def _count_cut_page(self) -> None:
        """A page cut short (a stop, a failure, a reader gone): its bytes were received all the same."""
        if self._cut_page is not None:
            self.stats.bytes += self._cut_page.bytes_read
            self._cut_page = None

    def _skip(self, batches: Iterator[List[bytes]], resume: Point) -> List[bytes]:
        """Skip the answer's first ``resume.events`` events if their digest matches (else
        ResumeMismatch); the rest of the batch they end in is returned."""
        hasher = new_hasher()
        seen = 0
        rest: List[bytes] = []
        while seen < resume.events:
            batch = next(batches, None)
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
        last: Optional[bytes] = None
        shown = 0  # the page's lines, counted towards ``stop_after`` (the demo's --events)
        if resume is not None:
            batches = itertools.chain([self._skip(batches, resume)], batches)
        else:
            self.delivery.begin_page(self.token)
        for batch in batches:
            self.reports.skipped(page)
            if not batch:
                continue
            limit_reached = False
            if self.stop_after is not None:
                left = self.stop_after - self.stats.events - shown
                limit_reached = left <= len(batch)
                batch = batch[: max(0, left)]
                shown += len(batch)
            # Not interruptible: the writer watches the stop flag itself (WriteStopped), so that a
            # stop neither loses the count of a write under way nor cuts a line it can still finish.
            self.delivery.write(batch)
            self.stats.written += len(batch)
            if limit_reached:
                # Stopped only now: a stop set before the write would leave those lines unwritten.
                self.stats.events += shown
                self.stats.pages += 1
                self.stop.end(f"{self.stop_after} events shown")
                raise WriteStopped(self.stop.reason)
            last = batch[-1]
            self.reports.check_line_lengths(batch)
        self.reports.skipped(page)
        return last
