"""``--ack none`` on a pipe, socket or regular file: taken is what the reader, the peer or the disk took.

`DrainDelivery`: a pipe's reader took the bytes out (``FIONREAD`` on our end shows what is unread),
a TCP peer's stack acknowledged them (``SIOCOUTQ``). `SyncDelivery`: a regular file's bytes were
fsynced (as writing goes, so a point inside a page is reached without waiting for its end).

The settle rule (pipes and sockets): a reader may take lines and drop them while it shuts down
(Fluent Bit's exec input reads on after its engine stopped flushing). While the process runs the
record follows the drained position closely: a kill -9 of this process leaves the reader alive with
its lines. A stop is the moment the reader may be going away: `finish` then writes back the point
drained ``settle`` seconds earlier. A clean ``--once`` end instead waits until the last line has
settled, while the reader stays. This module writes nothing but event lines to stdout and never
logs tokens.
"""

from __future__ import annotations

import errno
import os
import select
import termios
import threading
import time
from typing import Any, Optional

from kata_events import logs
from kata_events.delivery import stalled_reader
from kata_events.delivery.disk_faults import is_disk_fault
from kata_events.delivery.ledger import DeliveryLedger
from kata_events.delivery.pipe_room import unread_bytes
from kata_events.delivery.policies import DRAIN_POLL, Delivery
from kata_events.delivery.writer import PIECE_LINES, OutputFailed
from kata_events.state.store import short_token

#: Linux: bytes in a socket's send queue not yet acknowledged by the peer.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)
#: A regular file is fsynced at most this often while lines are written to it.
FILE_SYNC_EVERY = 0.02
#: The bound on what any stop sends again, the settle window's lines included.
STOP_RESEND_BOUND = 3000
#: With a settle window: the most lines written beyond what the reader wholly took. Small enough
#: that what a pipe holds when a stop comes fits Fluent Bit's exec input's ring buffer (1,024
#: records) with room to spare: past it, that input spends a second on every line it reads while it
#: shuts down. Large enough to keep a reader busy (a few pieces of event-sized lines).
FLIGHT_LINES = 600


class SyncDelivery(Delivery):
    """A regular file: units are bytes, taken once fsynced. A thread named ``fsync`` fsyncs as
    writing goes, so the delivery point lags the written position by about an fsync."""

    guarantee = "a line counts as delivered once its bytes are fsynced to the file"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._sync_loop, name="fsync", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        # The syncer records what it fsyncs: wake it (after a piece, and while the writer waits).
        self._wake.set()

    _nudge = _check

    def _fsync(self) -> bool:
        """fsync stdout; False on a disk fault, reported to the health."""
        try:
            os.fsync(self.writer.fd)
        except OSError as exc:
            if is_disk_fault(exc):
                # Nothing more is recorded until an fsync succeeds.
                self.health.trouble("stdout", f"syncing stdout failed: {os.strerror(exc.errno or 0)}")
                return False
            if exc.errno not in (errno.EINVAL, errno.EROFS):
                raise OutputFailed(f"syncing stdout failed: {os.strerror(exc.errno or 0)}") from None
        if self.health.failing("stdout") and not self.writer.write_failing:
            self.health.recovered("stdout")
        return True

    def _sync_written(self) -> None:
        """With the lock held: fsync what is written and count it as taken."""
        position = self.ledger.written
        if self._fsync():
            self._take(position)

    def end_page(self, token: str) -> None:
        with self._lock:
            self.ledger.begin_page(token)
            self._sync_written()

    def retry(self) -> None:
        with self._lock:
            if self.health.failing("stdout"):
                self._sync_written()
        super().retry()

    def _sync_loop(self) -> None:
        while not self._closing:
            if self.ledger.unacked == 0:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            time.sleep(FILE_SYNC_EVERY)
            if self.health.failing("stdout"):
                continue  # the runner's retry syncs again, with backoff
            with self._lock:
                position = self.ledger.written
            try:
                synced = self._fsync()
            except OutputFailed as exc:
                self.failure = exc
                self.stop.ask_and_wake("error")
                return
            if synced:
                with self._lock:
                    self._take(position)

    def _finish(self, timeout: float, clean: bool) -> None:
        with self._lock:
            self._sync_written()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        super().close()


class DrainDelivery(Delivery):
    """A pipe or socket: units are bytes, taken once out of the pipe or acknowledged by the peer. A
    thread named ``drain`` moves the delivery point as they are taken (about a pipe's worth behind
    the written position) and watches for the reader going away. ``settle``: seconds a line must
    have been taken before a stop for it to count."""

    def __init__(self, *args: Any, kind: str, settle: float, settle_lines: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.settle = settle
        lines = settle_lines if settle > 0 else 0
        self.ledger = DeliveryLedger(settle=settle, settle_lines=lines)
        #: With a settle window bounded in lines: the most lines written beyond what the reader
        #: wholly took, so that a stop re-sends at most `STOP_RESEND_BOUND` (None: no such bound).
        self.flight_lines = min(FLIGHT_LINES, STOP_RESEND_BOUND - lines - PIECE_LINES) if lines > 0 else None
        taken = "a line counts as delivered once the reader has taken it out of the pipe and stayed"
        if kind == "socket":
            taken = "a line counts as delivered once the peer's TCP stack acknowledged it and the peer stayed"
        bounded = f", at most {lines} lines back at a stop (settle_lines)" if lines else ""
        self.guarantee = f"{taken} {settle:g} s after that (settle_time){bounded}"
        self._measurable = True
        #: When the reader was seen gone (pipe: no reader left; socket: hung up), else None.
        self._gone_at: Optional[float] = None
        self._thread = threading.Thread(target=self._watch, name="drain", daemon=True)
        self._thread.start()

    def _unread(self) -> int:
        """Bytes written but not yet taken by the reader (0 when that cannot be measured)."""
        if not self._measurable:
            return 0
        try:
            return unread_bytes(self.writer.fd, termios.FIONREAD if self.kind == "pipe" else SIOCOUTQ)
        except OSError as exc:
            self._measurable = False
            logs.emit(
                "drain_unmeasurable",
                f"cannot measure how much of stdout the reader has taken ({exc}); counting a page "
                "delivered once written",
            )
            return 0

    def _check(self) -> None:
        """With the lock held: record what the reader has taken by now (also while the writer
        waits for the record, and after a piece a stop cut)."""
        self._take(max(0, self.ledger.written - self._unread()))

    _nudge = _check

    def _wait_for_record(self, count: int) -> None:
        """Also wait while the piece would put more than `flight_lines` beyond what the reader
        wholly took."""
        super()._wait_for_record(count)
        delay = 0.0005
        while self.flight_lines is not None and not self._wait_ends():
            with self._lock:
                self._check()
                if self.ledger.lines_in_flight() + count <= self.flight_lines or self.ledger.unacked == 0:
                    return
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _watch(self) -> None:
        # POLLERR (pipe: no reader left) and POLLHUP (socket) are reported whatever the mask.
        poller = select.poll()
        poller.register(self.writer.fd, select.POLLERR)
        while not self._closing:
            if self._gone_at is None:
                events = poller.poll(DRAIN_POLL * 1000)
                if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events):
                    self._gone_at = time.monotonic()
                    self.ledger.freeze(self._gone_at)
            else:
                time.sleep(DRAIN_POLL)
            if self.ledger.unacked:
                with self._lock:
                    self._check()

    def _finish(self, timeout: float, clean: bool) -> None:
        if clean:
            deadline = time.monotonic() + timeout
            while self.ledger.unacked and time.monotonic() < deadline and not self.stop.asked:
                with self._lock:
                    self._check()
                if self.ledger.unacked:
                    time.sleep(DRAIN_POLL / 2)
            if self.settle <= 0:
                return
            # Then until the last line has settled (unless lines are unread, the reader left, a stop).
            with self._lock:
                self._check()
                unread, target = self.ledger.unacked, self.ledger.taken_position
            while not unread and not self.stop.asked and self._gone_at is None:
                with self._lock:
                    if self.ledger.settled_position(time.monotonic()) >= target:
                        return
                time.sleep(DRAIN_POLL)
        self._go_back_to_settled()
        if self.kind == "pipe":
            self._release_stalled_fluent_bit()

    def _release_stalled_fluent_bit(self) -> None:
        """After going back: if Fluent Bit reads the pipe and has stalled, empty the pipe for it (what
        is still there was never taken, so it already counts as not delivered)."""
        if self._unread() == 0:
            return
        pid = stalled_reader.fluent_bit_reader(self.writer.fd)
        if pid is None or not stalled_reader.stalled(self._unread):
            return
        try:
            data = stalled_reader.empty_pipe(self.writer.fd)
        except OSError as exc:
            logs.emit(
                "reader_stalled",
                f"stopping: Fluent Bit (pid {pid}) has stopped taking lines out of the pipe, and "
                f"the pipe could not be emptied for it ({exc}): it drops each line left there "
                "after trying it for a second, so its stop takes that long",
                level="WARNING",
                pid=pid,
            )
            return
        lines = data.count(b"\n")
        logs.emit(
            "reader_stalled",
            f"stopping: Fluent Bit (pid {pid}) has stopped taking lines out of the pipe (its "
            f"exec input drops what it reads once its engine has stopped, a second per line); the "
            f"{lines} lines left in the pipe were read out so that it can stop now: "
            "they were not delivered and are sent again at the next start",
            pid=pid,
            bytes=len(data),
            lines=lines,
        )

    def _go_back_to_settled(self) -> None:
        """A stop: record the point the reader had taken ``settle`` seconds ago, nothing younger."""
        with self._lock:
            self._check()
            reference = min(t for t in (time.monotonic(), self._gone_at, self.stop.at) if t is not None)
            position = self.ledger.stop_position(reference)
            point = self.ledger.point_at(position)
            younger = self.ledger.taken_position - position
            lines = self.ledger.lines_at(self.ledger.taken_position) - self.ledger.lines_at(position)
        # Nothing younger is recorded after this: not a point a failing state file left unsaved,
        # not the drain thread's last look while it closes.
        with self.recorder.final():
            recorded = self.recorder.recorded
            if point is None or point == recorded:
                return
            if point.first_page and recorded is not None and recorded.token is not None:
                # Inside the first page of a new subscription, whose token is committed already: no
                # token to go back to. Starting a new subscription instead would skip more than it saves.
                logs.emit(
                    "settle",
                    f"stopping: the last {younger} bytes the reader took, in the last "
                    f"{self.settle:g} s (settle_time), belong to the first page of a new "
                    "subscription, which has no token to go back to: they count as delivered",
                    level="WARNING",
                    bytes=younger,
                    settle_time=self.settle,
                )
                return
            logs.emit(
                "settle",
                f"stopping: the last {younger} bytes ({lines} lines) the reader took do not count as "
                f"delivered: those of the last {self.settle:g} s (settle_time), going back at most "
                f"{self.ledger.settle_lines or 'all'} lines (settle_lines) and then to the delivery "
                "point at or before that (pieces are at most 500 lines); they are sent again at the "
                "next start",
                bytes=younger,
                lines=lines,
                settle_time=self.settle,
                settle_lines=self.ledger.settle_lines,
                events=point.events,
                token=short_token(point.token),
            )
            self.recorder.write_final(point)
