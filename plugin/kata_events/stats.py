"""What the run reports about itself: counters, the page and lag lines, the stats lines, metrics.

`Stats` holds the counters; `Reports` turns them into the ``page``, ``lag``, ``lag_recovered``,
``line_too_long``, ``event_skipped``, ``stats`` and ``stop`` log lines and the metrics' snapshot,
read from any thread as plain reads of counters. It never writes to stdout and never decides
anything about delivery.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from kata_events import __version__, logs
from kata_events.delivery.policies import Delivery
from kata_events.options import SERVER_RETENTION_SECONDS
from kata_events.source.pages import Page

if TYPE_CHECKING:
    from kata_events.status_record import Health

#: A lag warning is repeated at most this often while the lag stays above the threshold.
LAG_WARN_EVERY = 300.0
#: The counters every stats line carries as they are.
_COUNTERS = ("events", "pages", "bytes", "retries", "skipped")

_TIMESTAMP = re.compile(rb'"Timestamp"\s*:\s*"?(\d{9,19})')


def event_age(line: bytes, now: float) -> Optional[float]:
    """Seconds since an event's ``Timestamp`` (epoch seconds, ms or µs), or None if it has none."""
    match = _TIMESTAMP.search(line)
    if not match:
        return None
    value = float(match.group(1))
    # Nanoseconds, microseconds (what the Central Node sends) or milliseconds down to seconds.
    while value > 1e11:
        value /= 1000
    return max(0.0, now - value)


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
    #: Retries by reason (the metric's label): see `ApiError.reason`.
    retry_reasons: Dict[str, int] = field(default_factory=dict)
    #: Whether the last answer was full: the server has more, the stream is behind.
    behind: bool = False
    #: Whether the Central Node answers (the up metric): False while refused or failing.
    up: bool = False


@dataclass
class Reports:
    """The run's counters and every line and figure made from them."""

    delivery: Delivery
    max_events: int
    max_event_bytes: int = 0
    lag_warning: float = 3600.0
    stats_interval: float = 60.0
    warn_line_bytes: int = 0
    clock: Callable[[], float] = time.time
    #: The status record `kata-events status` reads (None: not kept, e.g. in tests).
    health: Optional[Health] = None
    stats: Stats = field(default_factory=Stats)
    _lag_warned: float = field(default=0.0, init=False)
    _line_warned: bool = field(default=False, init=False)

    def skipped(self, page: Page) -> None:
        """Tell about each event of the page the splitter had to skip."""
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
                limit=self.max_event_bytes,
                url=page.base_url,
            )

    def check_line_lengths(self, batch: List[bytes]) -> None:
        """Say once when an event line is longer than ``warn_line_bytes``."""
        if not self.warn_line_bytes or self._line_warned:
            return
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

    def account(self, page: Page, count: int, last_line: Optional[bytes], seconds: float) -> None:
        """Count a delivered page; say how far behind the stream is when it matters."""
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
        stats.behind = count >= self.max_events
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
                f"Node keeps events for at most {SERVER_RETENTION_SECONDS // 3600} h, older ones are lost",
                lag_seconds=round(lag, 1),
                limit=self.lag_warning,
                full_page=count >= self.max_events,
            )
        elif self._lag_warned and lag is not None and lag <= self.lag_warning:
            self._lag_warned = 0.0
            logs.emit(
                "lag_recovered",
                f"caught up: the newest event delivered is {lag:.0f} s old",
                lag_seconds=round(lag, 1),
                limit=self.lag_warning,
            )

    def snapshot(self) -> SimpleNamespace:
        """The metrics' values now, by family (read from any thread: plain reads of counters)."""
        s = self.stats
        return SimpleNamespace(
            events=s.events,
            bytes=s.bytes,
            pages=s.pages,
            retries=dict(s.retry_reasons),
            lag_seconds=(s.lag_seconds or 0.0) if s.behind else 0.0,
            last_commit_timestamp_seconds=self.health.record["last_commit"] if self.health else None,
            unacknowledged_lines=self.delivery.ledger.unacked if self.delivery.mode == "lines" else 0,
            up=s.up,
            build_info={__version__: 1},
        )

    def start(self, ended: threading.Event) -> Optional[threading.Thread]:
        """The thread that writes a stats line every ``stats_interval`` seconds until ``ended``."""
        if not self.stats_interval or self.stats_interval <= 0:
            return None

        def tick() -> None:
            while not ended.wait(self.stats_interval):
                self.stats_line("stats")
                self.delivery.check_ack_timeout()

        thread = threading.Thread(target=tick, name="stats", daemon=True)
        thread.start()
        return thread

    def stats_line(
        self, name: str, final: bool = False, exit_code: Optional[int] = None, reason: str = ""
    ) -> None:
        """A stats line (``stats``), or the last one (``stop``, with the reason and exit code)."""
        s = self.stats
        ledger = self.delivery.ledger
        # Ack mode counts lines; the others count bytes (drain) or lines (terminal): shown only
        # where they are acknowledgements, so every field of the line is in lines.
        acked = self.delivery.mode == "lines"
        fields: Dict[str, Any] = {name: getattr(s, name) for name in _COUNTERS}
        # Lines as the ledger counts them piece by piece, and those of a piece cut short (a stop,
        # a reader gone after `| head`): a page cut short counts what went out of it.
        # (Acknowledgement mode counts a piece before writing it: nothing to add there.)
        cut_short = 0 if acked else self.delivery.writer.cut_short_lines
        written = max(ledger.lines + cut_short, s.written)
        recorded = self.delivery.recorder.recorded
        in_page = recorded.events if recorded is not None else 0
        fields.update(
            lag_seconds=None if s.lag_seconds is None else round(s.lag_seconds, 1),
            written=written,
            acknowledged=ledger.taken_position if acked else None,
            unacknowledged=ledger.unacked if acked else None,
            committed_pages=self.delivery.recorder.committed_pages,
            committed_in_page=in_page,
            uptime_seconds=round(time.monotonic() - s.started, 1),
        )
        counts = f"{logs.counted(s.events, 'event')} in {logs.counted(s.pages, 'page')}"
        message = counts + (f", {ledger.unacked} unacknowledged" if acked else "")
        if final:
            reason = reason or "finished"
            fields = {"reason": reason, "exit_code": exit_code, **fields}
            message = (
                f"stopped ({reason}): {counts}, {logs.counted(written, 'event line')} written; "
                f"saved: {logs.counted(self.delivery.recorder.committed_pages, 'page')}"
                + (f" and {logs.counted(in_page, 'event')} after them" if in_page else "")
            )
        logs.emit(name, message, **fields)
