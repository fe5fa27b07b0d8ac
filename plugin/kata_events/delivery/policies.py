"""Delivery: writes event lines to stdout and decides when a page counts as taken.

`LineWriter` owns the stdout file descriptor: it writes whole batches with `os.write`, checks what
every call really took, and turns a vanished reader into `ConsumerGone`. Python's buffered
``sys.stdout`` is never used for events: on a pipe whose reader went away it can report a short
write as success.

A `Delivery` joins the writer to a `DeliveryLedger` and the token store: the runner says where pages
begin and end, lines are written in pieces of at most `PIECE_BYTES` and `PIECE_LINES`, and after
each piece the ledger knows the delivery point (`kata_events.state.progress.Point`: a token and how many
events of its answer are delivered, with their digest) that the taken position stands for. A point
with a new token is committed durably (the state file); a point further into the same page is
noted cheaply (the companion record). All of it goes through `Delivery._persist`. Before each piece, writing
waits while `RECORD_AHEAD_LINES` lines are written but not recorded, in every mode: what a kill -9
sends again is bounded by that count (`RESEND_BOUND`), never by how the threads were scheduled.
What "taken" means depends on what stdout is (see `make_delivery`):

- ``--ack lines`` (`AckDelivery`): the shipper acknowledged the line on stdin (rsyslog improg).
- ``--ack none`` on a pipe (`DrainDelivery`): the reader has taken the bytes out of the pipe
  (``FIONREAD`` on our end shows what is still unread); on a TCP socket, the peer acknowledged
  them (``SIOCOUTQ``); on a regular file, they were fsynced (a syncer thread fsyncs as writing
  goes, so a point inside a page is reached without waiting for the page's end).
- anything else (a terminal): written is taken.

The settle rule (pipes and sockets): a reader may take lines and drop them while it shuts down
(Fluent Bit's exec input reads on after its engine stopped flushing). While the process runs, the
record follows the drained position closely, because a kill -9 of this process leaves the reader
alive and its lines safe. A stop (signal, broken pipe, error) is the moment the reader may be
going away: `DrainDelivery.finish` then writes back the point that was drained ``settle`` seconds
earlier, so nothing younger counts as delivered. A clean ``--once`` end instead waits until the
last line has settled, while the reader stays there.

Commits may happen on a background thread (acknowledgements and drain arrive while the loop waits
in a long poll); all ledger updates and commits are serialised by one lock. A commit or a
regular-file stdout failing mid-run on a disk fault does not end the process: it is reported to
the `DiskHealth` (`kata_events.delivery.disk_faults`), the point reached but not saved is kept, and
`retry` saves it once the disk works again. This module writes nothing but event lines to stdout
and never logs tokens.
"""

from __future__ import annotations

import array
import bisect
import errno
import fcntl
import itertools
import os
import select
import termios
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

from kata_events import logs
from kata_events.delivery.acks import AckEvent, AckParser
from kata_events.delivery.disk_faults import DiskHealth, is_disk_fault
from kata_events.delivery.ledger import DeliveryLedger
from kata_events.delivery.recorder import Recorder
from kata_events.exits import ExitStatus
from kata_events.fds import fd_kind
from kata_events.state.progress import Point, joined
from kata_events.state.store import short_token
from kata_events.stopping import Stop

#: errno values that mean "the reader is gone" rather than "try again".
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF}
#: How often the drain of a pipe or socket is looked at while pages wait for their commit.
DRAIN_POLL = 0.05
#: How often the ack reader checks for lines waiting too long while stdin is silent.
ACK_CHECK_EVERY = 0.25
#: While stopping, how long a half-written line may take to complete before it is abandoned.
FINISH_LINE_GRACE = 0.5
#: How long the writer waits for room in stdout before it looks at the stop flag again.
WRITE_POLL_MS = 50
#: Linux: bytes in a socket's send queue not yet acknowledged by the peer.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)
#: Lines are written (and their delivery point tracked) in pieces of about this many bytes...
PIECE_BYTES = 256 * 1024
#: ...and at most this many lines (small events would otherwise make a piece of thousands).
PIECE_LINES = 1000
#: Writing waits while this many lines are written but not yet recorded as delivered (in the state
#: file or its progress record), in every mode: a busy machine, a slow disk or an acknowledgement
#: thread kept off the CPU slows the writing, never lets what a kill -9 sends again grow. A restart
#: re-sends at most this plus one piece: `RESEND_BOUND` lines.
RECORD_AHEAD_LINES = 2000
#: The bound on lines delivered and sent again after a kill -9, whatever the threads' timing.
RESEND_BOUND = RECORD_AHEAD_LINES + PIECE_LINES
#: A regular file is fsynced at most this often while lines are written to it.
FILE_SYNC_EVERY = 0.02


class ConsumerGone(Exception):
    """stdout's reader went away (EPIPE and friends): stop quietly, commit nothing unflushed."""


class OutputFailed(Exception):
    """Writing or syncing stdout failed for another reason (a full or failing disk)."""

    exit_code = ExitStatus.IO_ERROR


def pieces(
    lines: List[bytes], limit: int = PIECE_BYTES, max_lines: int = PIECE_LINES
) -> Iterator[Tuple[bytes, int]]:
    """``lines`` as written (newline after each), cut at line ends into pieces of about ``limit``
    bytes and at most ``max_lines`` lines: (bytes, number of lines) each. A line longer than
    ``limit`` is a piece of its own."""
    n = len(lines)
    if n == 0:
        return
    ends = list(itertools.accumulate(map((1).__add__, map(len, lines))))
    if ends[-1] <= limit and n <= max_lines:
        yield joined(lines), n
        return
    start = 0
    base = 0
    while start < n:
        stop = bisect.bisect_right(ends, base + limit, lo=start)
        stop = min(max(stop, start + 1), start + max_lines)
        yield joined(lines[start:stop]), stop - start
        base = ends[stop - 1]
        start = stop


class WriteStopped(Exception):
    """A stop was asked for while the writer waited for room in stdout; whole lines stay whole."""


def _shared_with_stderr(fd: int) -> bool:
    try:
        a, b = os.fstat(fd), os.fstat(2)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class LineWriter:
    """Writes batches of lines to a file descriptor and confirms every byte was taken.

    On a pipe or socket the descriptor is made non-blocking and the writer waits for room with
    poll(), checking ``should_stop`` between waits: a stop never lands in the middle of a write
    (its count would be lost) and never leaves half a line behind when it can be helped — an
    unfinished line gets `FINISH_LINE_GRACE` to complete. When stdout and stderr are one pipe
    (``2>&1``) the descriptor stays blocking, since stderr would share the flag.
    """

    def __init__(self, fd: int = 1, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.fd = fd
        self.should_stop = should_stop
        #: Seconds a half-written line may take to complete once a stop is asked for.
        self.finish_line_grace = FINISH_LINE_GRACE
        # Also used when someone else made the descriptor non-blocking (a parent, or a shared
        # 2>&1 pipe): a full pipe is then a wait, never mistaken for a vanished reader.
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        self._made_nonblocking = False
        # A regular file (``>> file``) on a full or failing disk is waited out, not given up on.
        self._regular_file = fd_kind(fd) == "file"
        #: True while a write waits out a disk fault (an fsync that succeeds meanwhile is no recovery).
        self.write_failing = False
        self.health: Optional[DiskHealth] = None
        if fd_kind(fd) in ("pipe", "socket") and not _shared_with_stderr(fd):
            try:
                os.set_blocking(fd, False)
                self._made_nonblocking = True
            except OSError:
                pass

    def write_lines(self, lines: List[bytes]) -> int:
        """Write ``lines`` (each without its newline) as one batch; return the bytes written."""
        if not lines:
            return 0
        return self.write_bytes(joined(lines))

    def write_bytes(self, data: bytes) -> int:
        """Write ``data`` (whole lines, each ending in a newline); return the bytes written."""
        if not data:
            return 0
        view = memoryview(data)
        total = len(data)
        done = 0
        give_up_at: Optional[float] = None
        disk_trouble = False
        try:
            while done < total:
                end = total
                if self.should_stop():
                    if done == 0 or data[done - 1] == 0x0A:
                        raise WriteStopped(f"stopped at a line boundary after {done} bytes")
                    # Finish the line under way, and nothing after it.
                    end = data.index(b"\n", done) + 1
                    now = time.monotonic()
                    if give_up_at is None:
                        give_up_at = now + self.finish_line_grace
                    if now >= give_up_at:
                        raise WriteStopped("stdout took no more while stopping: a line is cut")
                try:
                    n = os.write(self.fd, view[done:end])
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    if not (self._regular_file and self.health is not None and is_disk_fault(exc)):
                        raise
                    disk_trouble = self.write_failing = True
                    self.health.trouble("stdout", f"writing stdout failed: {os.strerror(exc.errno or 0)}")
                    if not self.health.wait(self.should_stop):
                        self.write_failing = False
                        self._cut_partial_line(data, done)
                        raise WriteStopped("stopped while stdout's disk failed") from None
                    continue
                if n > 0:
                    done += n
                    if disk_trouble:
                        disk_trouble = self.write_failing = False
                        self.health.recovered("stdout")  # type: ignore[union-attr]
                    continue
                self._poll.poll(WRITE_POLL_MS)
        except OSError as exc:
            if exc.errno in _GONE:
                raise ConsumerGone(f"stdout closed: {os.strerror(exc.errno or 0)}") from None
            raise OutputFailed(f"writing stdout failed: {os.strerror(exc.errno or 0)}") from None
        return total

    def _cut_partial_line(self, data: bytes, done: int) -> None:
        """Take back the start of a line the file got before its disk failed: no torn line is left.

        Assumes no one else appends to the file meanwhile (``>> file`` has one writer).
        """
        cut = done - (data.rfind(b"\n", 0, done) + 1)
        if cut <= 0:
            return
        try:
            os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_END) - cut)
        except OSError:
            pass

    def close(self) -> None:
        """Give the descriptor back blocking: a shell holding the same pipe writes after us."""
        if self._made_nonblocking:
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass


class Delivery:
    """Written is taken: for a terminal or anything whose drain cannot be measured.

    ``commit(point)`` persists a point durably (a new token); ``note(point, durable)`` records a
    point further into the same page cheaply (without it, only tokens are recorded). ``settle``:
    seconds a line must have been taken before a stop for it to count (pipes and sockets only).
    """

    mode = "none"
    guarantee = "a page counts as delivered once written"
    #: Whether writing waits for a page's commit to be durable before it goes on.
    wait_for_commits = True

    def __init__(
        self,
        writer: LineWriter,
        commit: Callable[[Point], None],
        note: Optional[Callable[[Point, bool], None]] = None,
        settle: float = 0.0,
        stop: Optional[Stop] = None,
    ) -> None:
        #: The run's stop state: the writer looks at it while it waits for room, and a stop
        #: goes back from the moment it was asked for.
        self.stop = stop if stop is not None else Stop()
        writer.should_stop = lambda: self.stop.stopping
        self.writer = writer
        self.settle = settle
        self.ledger = DeliveryLedger(settle=settle)
        self._lock = threading.Lock()
        #: Whether the state file and stdout take data; the runner pauses fetching while not.
        self.health = DiskHealth()
        writer.health = self.health
        #: The one path to the state: the delivery point reached is offered, never written here.
        self.recorder = Recorder(commit, note, self.health)
        #: Told when a background thread hits an error the process cannot go on with.
        self.on_failure: Callable[[Exception], None] = lambda exc: None

    # -- the runner's side ----------------------------------------------------------------------

    def start_from(self, point: Optional[Point]) -> None:
        """The point the state holds at start: recording begins after it."""
        self.recorder.start_from(point)

    def begin_page(self, token: Optional[str], events: int = 0, hasher: Any = None) -> None:
        """The next lines answer ``token``; its first ``events`` (digest in ``hasher``) are delivered."""
        with self._lock:
            self.ledger.begin_page(token, events, hasher)

    def written_point(self) -> Optional[Point]:
        """The point at what is written: a retry of the page may skip that much in-process."""
        with self._lock:
            return self.ledger.written_point()

    def write(self, lines: List[bytes]) -> None:
        """Write one batch of lines belonging to the current page."""
        for data, count in pieces(lines):
            self._wait_for_record()
            self._write_piece(data, count)

    def _write_piece(self, data: bytes, count: int) -> None:
        self.writer.write_bytes(data)
        with self._lock:
            self.ledger.wrote(len(data), time.monotonic(), data, count)
            self._take(self.ledger.written)

    def _wait_for_record(self) -> None:
        """Before a piece: wait while `RECORD_AHEAD_LINES` lines written are not recorded as delivered.

        Counted in lines whatever the threads' timing, so what a kill -9 sends again is bounded
        by a count. The wait ends at a stop, or while a disk fault pauses recording (the runner's
        retry then owns the state file, and the bound is the disk's, as the pause says).
        """
        recorder = self.recorder
        # A page's commit is waited for before writing on, as the reader's pace allows: what a
        # kill -9 sends again stays within about two pages (ack mode: the shipper paces writing).
        while self.wait_for_commits and recorder.commit_due() and not self._wait_ends():
            recorder.wait_for_commit(DRAIN_POLL)
        while self.ledger.lines - recorder.lines >= RECORD_AHEAD_LINES and not self._wait_ends():
            with self._lock:
                self._nudge()
            recorder.wait_for_lines(self.ledger.lines - RECORD_AHEAD_LINES + 1, DRAIN_POLL)

    def _wait_ends(self) -> bool:
        """With the lock held: whether a wait for the record must give up (a stop, a disk fault)."""
        return self.stop.stopping or self.health.paused

    def _nudge(self) -> None:
        """With the lock held: help the record move while the writer waits for it (subclasses)."""

    def end_page(self, token: str) -> None:
        """The current page is complete; its token may be committed once its lines are taken."""
        with self._lock:
            self.ledger.page_end(token)
            self._take(self.ledger.written)

    def _take(self, position: int) -> None:
        """With the lock held: record ``position`` as taken, and the delivery point it reaches."""
        if self.stop.at is not None:
            self.ledger.freeze(self.stop.at)
        self.ledger.taken(position, time.monotonic())
        taken = self.ledger.taken_position
        self.recorder.offer(self.ledger.point_at(taken), lines=self.ledger.lines_at(taken))

    @property
    def recorded(self) -> Optional[Point]:
        """The newest point written to the state (or loaded from it)."""
        return self.recorder.recorded

    @property
    def committed_pages(self) -> int:
        return self.recorder.committed_pages

    def forget_token(self, clear: Callable[[], None]) -> None:
        """The subscription is lost: ``clear`` the saved token, through the one recorder."""
        self.recorder.clear(clear)

    @property
    def unacked(self) -> int:
        return self.ledger.unacked

    def retry(self) -> None:
        """While paused on a disk fault: try the failed step again (the runner calls it with backoff)."""
        self.recorder.retry()

    def wait_for_room(self, should_stop: Callable[[], bool]) -> None:
        """Block while too much is unacknowledged; nothing to wait for when written is taken."""

    def check_ack_timeout(self) -> None:
        """Warn when lines wait too long for their acknowledgement (ack mode only)."""

    def finish(
        self, timeout: float, clean: bool = False, interrupted: Callable[[], bool] = lambda: False
    ) -> None:
        """Last chance to record before exit. ``clean``: a --once run that caught up (a pipe then
        waits for the drain and the settle time); otherwise a stop (a pipe goes back to the point
        that had settled). ``interrupted`` says a stop was asked for meanwhile."""
        self._finish(timeout, clean, interrupted)
        self.recorder.flush()

    def _finish(self, timeout: float, clean: bool, interrupted: Callable[[], bool]) -> None:
        """What `finish` waits for before the last record (subclasses)."""

    def close(self) -> None:
        """Stop background threads, write what is pending, give stdout back as it was."""
        self.recorder.close()
        self.writer.close()


class DrainDelivery(Delivery):
    """``--ack none`` on a pipe, socket or file: taken is what left the pipe / reached the peer / disk.

    Units are bytes. Writing waits for the drain only at the record window: a watcher thread
    (pipe, socket) or a syncer thread (file) moves the delivery point as the bytes are taken, so it
    lags the written position by about a pipe's worth, or one fsync.
    """

    def __init__(
        self,
        writer: LineWriter,
        commit: Callable[[Point], None],
        kind: str,
        note: Optional[Callable[[Point, bool], None]] = None,
        settle: float = 0.0,
        stop: Optional[Stop] = None,
    ) -> None:
        super().__init__(writer, commit, note, settle if kind in ("pipe", "socket") else 0.0, stop)
        self.kind = kind
        self.guarantee = {
            "pipe": "a line counts as delivered once the reader has taken it out of the pipe and "
            f"stayed {self.settle:g} s after that (settle_time)",
            "socket": "a line counts as delivered once the peer's TCP stack acknowledged it and the "
            f"peer stayed {self.settle:g} s after that (settle_time)",
            "file": "a line counts as delivered once its bytes are fsynced to the file",
        }[kind]
        self._measurable = True
        self._wake = threading.Event()
        self._closing = False
        #: When the reader was seen gone (pipe: no reader left; socket: hung up), else None.
        self._gone_at: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        if kind in ("pipe", "socket"):
            self._thread = threading.Thread(target=self._watch, name="drain", daemon=True)
        else:
            self._thread = threading.Thread(target=self._sync_loop, name="fsync", daemon=True)
        self._thread.start()

    def _unread(self) -> int:
        """Bytes written but not yet taken by the reader (0 when that cannot be measured)."""
        if not self._measurable:
            return 0
        request = termios.FIONREAD if self.kind == "pipe" else SIOCOUTQ
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self.writer.fd, request, buf, True)
        except OSError as exc:
            self._measurable = False
            logs.emit(
                "drain_unmeasurable",
                f"cannot measure how much of stdout the reader has taken ({exc}); counting a page "
                "delivered once written",
            )
            return 0
        return buf[0]

    def _check(self) -> None:
        """With the lock held: record whatever the reader has taken by now."""
        if self.kind == "file":
            return
        position = max(0, self.ledger.written - self._unread())
        self._take(position)

    def _write_piece(self, data: bytes, count: int) -> None:
        n = self.writer.write_bytes(data)
        with self._lock:
            self.ledger.wrote(n, time.monotonic(), data, count)
            self._check()
        self._wake.set()

    def _wait_ends(self) -> bool:
        return self._closing or super()._wait_ends()

    def _nudge(self) -> None:
        # A regular file: the syncer records what it fsyncs; a pipe or socket: look at the drain.
        if self.kind == "file":
            self._wake.set()
        else:
            self._check()

    def _fsync(self) -> bool:
        """fsync stdout (a regular file); False on a disk fault, reported to the health."""
        try:
            os.fsync(self.writer.fd)
        except OSError as exc:
            if is_disk_fault(exc):
                # Nothing more is recorded until an fsync succeeds.
                self.health.trouble("stdout", f"syncing stdout failed: {os.strerror(exc.errno or 0)}")
                return False
            if exc.errno not in (errno.EINVAL, errno.EROFS):
                raise OutputFailed(f"syncing stdout failed: {os.strerror(exc.errno or 0)}") from None
        return True

    def _synced(self, position: int) -> None:
        """With the lock held: everything up to ``position`` is fsynced."""
        if self.health.failing("stdout") and not self.writer.write_failing:
            self.health.recovered("stdout")
        self._take(position)

    def end_page(self, token: str) -> None:
        with self._lock:
            if self.kind == "file":
                self.ledger.page_end(token)
                position = self.ledger.written
                if self._fsync():
                    self._synced(position)
                return
            self.ledger.page_end(token)
            self._check()
        self._wake.set()

    def retry(self) -> None:
        with self._lock:
            if self.kind == "file" and self.health.failing("stdout"):
                position = self.ledger.written
                if self._fsync():
                    self._synced(position)
        self.recorder.retry()

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

    def _sync_loop(self) -> None:
        """A regular file: fsync what is written, then record it, as often as FILE_SYNC_EVERY."""
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
                self.on_failure(exc)
                return
            if synced:
                with self._lock:
                    self._synced(position)

    def _finish(self, timeout: float, clean: bool, interrupted: Callable[[], bool]) -> None:
        if self.kind == "file":
            with self._lock:
                position = self.ledger.written
                if self._fsync():
                    self._synced(position)
            return
        if clean:
            deadline = time.monotonic() + timeout
            while self.ledger.unacked and time.monotonic() < deadline and not interrupted():
                with self._lock:
                    self._check()
                if self.ledger.unacked:
                    time.sleep(DRAIN_POLL / 2)
            if self._settle_wait(interrupted):
                return
        self._go_back_to_settled()

    def _settle_wait(self, interrupted: Callable[[], bool]) -> bool:
        """--once caught up: wait until the last line taken has settled; False if the reader left,
        lines are still unread, or a stop came first."""
        if self.settle <= 0:
            return True
        with self._lock:
            self._check()
            if self.ledger.unacked:
                return False
            target = self.ledger.taken_position
        while not interrupted() and self._gone_at is None:
            with self._lock:
                if self.ledger.settled_position(time.monotonic()) >= target:
                    return True
            time.sleep(DRAIN_POLL)
        return False

    def _go_back_to_settled(self) -> None:
        """A stop: record the point the reader had taken ``settle`` seconds ago, nothing younger."""
        with self._lock:
            try:
                self._check()
            except OSError:
                pass
            reference = min(t for t in (time.monotonic(), self._gone_at, self.stop.at) if t is not None)
            position = self.ledger.settled_position(reference)
            point = self.ledger.point_at(position)
            younger = self.ledger.taken_position - position
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
                f"stopping: the last {younger} bytes the reader took, in the last {self.settle:g} s "
                "(settle_time), do not count as delivered; they are sent again at the next start",
                bytes=younger,
                settle_time=self.settle,
                events=point.events,
                token=short_token(point.token),
            )
            self.recorder.write_final(point)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        super().close()


class AckDelivery(Delivery):
    """``--ack lines``: a line is taken when the shipper acknowledged it on stdin.

    A reader thread drains stdin all the time (else the shipper's ACK pipe fills and both sides
    block), feeds the ledger and commits. Writing runs ahead of acknowledgements by a bounded
    window: before each new page the runner waits in `wait_for_room`, and inside a page writing
    waits at the record window (`RECORD_AHEAD_LINES`). ``STOP`` or EOF on stdin
    asks the runner to stop; acknowledgements after ``STOP`` are ignored.
    """

    mode = "lines"
    guarantee = "a line counts as delivered once the shipper acknowledged it"
    wait_for_commits = False

    def __init__(
        self,
        writer: LineWriter,
        commit: Callable[[Point], None],
        note: Optional[Callable[[Point, bool], None]] = None,
        *,
        on_stop: Optional[Callable[[str], None]] = None,
        max_unacked: int,
        ack_timeout: float,
        stdin_fd: int = 0,
        already_read: bytes = b"",
        started: bool = False,
        stop: Optional[Stop] = None,
    ) -> None:
        super().__init__(writer, commit, note, stop=stop)
        self._cond = threading.Condition(self._lock)
        self._parser = AckParser()
        #: What STOP or the end of stdin does: by default, ask the run to stop.
        self._on_stop = on_stop if on_stop is not None else self.stop.ask
        self.max_unacked = max(1, max_unacked)
        self.ack_timeout = ack_timeout
        self._fd = stdin_fd
        self._started = started
        self._stopped = False
        self._junk_logged = False
        self._overacks = 0
        self._timeout_warned = False
        self._thread = threading.Thread(target=self._read_loop, name="acks", daemon=True)
        if already_read:
            for event in self._parser.feed(already_read):
                self._handle(event)
        self._thread.start()

    def _wait_ends(self) -> bool:
        return self._stopped or super()._wait_ends()

    def end_page(self, token: str) -> None:
        with self._lock:
            self.ledger.page_end(token)
            # Only an empty page can be wholly acknowledged already; later ACKs release the rest.
            self._take(self.ledger.taken_position)

    def _write_piece(self, data: bytes, count: int) -> None:
        # Counted before the write: the shipper may read and acknowledge a line before os.write
        # returns, and an ACK for a line not yet counted would be dropped as excess.
        with self._lock:
            self.ledger.wrote(count, time.monotonic(), data, count)
        self.writer.write_bytes(data)

    # -- the reader thread ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            # The main thread may sit in a long poll for minutes: silence on stdin is where an
            # overdue acknowledgement shows, so the timeout is checked here too.
            if not poller.poll(ACK_CHECK_EVERY * 1000):
                self.check_ack_timeout()
                continue
            try:
                data = os.read(self._fd, 65536)
            except InterruptedError:
                continue
            except OSError as exc:
                logs.emit("ack_protocol", f"stdin cannot be read any more ({exc}); stopping")
                data = b""
            if not data:
                for event in self._parser.close():
                    self._handle(event)
                self._handle(AckEvent("eof"))
                return
            for event in self._parser.feed(data):
                self._handle(event)
            if self._stopped:
                return

    def _handle(self, event: AckEvent) -> None:
        if self._stopped:
            return
        if event.kind == "ack":
            with self._cond:
                position = self.ledger.taken_position + event.count
                if position > self.ledger.written:
                    # Lines are counted before they are written, so no true acknowledgement goes
                    # past them: the shipper's count is wrong, and nothing it says then is evidence
                    # of delivery. Taken as far as written, it could mark undelivered lines done.
                    self._overacks += 1
                    logs.emit(
                        "ack_protocol",
                        f"protocol error: the shipper acknowledged {event.count} more lines, up to "
                        f"line {position}, but only {self.ledger.written} were written; this "
                        "acknowledgement is ignored (nothing counts as delivered by it)",
                        level="ERROR" if self._overacks == 1 else "DEBUG",
                        reason="more acknowledged than written",
                        acknowledged=self.ledger.taken_position,
                        written=self.ledger.written,
                        count=event.count,
                    )
                    return
                self._take(position)
                self._timeout_warned = False
                self._cond.notify_all()
        elif event.kind == "start":
            if self._started:
                self._note_junk("START")
            self._started = True
        elif event.kind in ("stop", "eof"):
            self._stopped = True
            with self._cond:
                self._cond.notify_all()
            what = "STOP" if event.kind == "stop" else "end of stdin"
            logs.emit("stop", f"the shipper said {what}: stopping", reason=what)
            self._on_stop(what)
        else:
            self._note_junk(event.text)

    def _note_junk(self, text: str) -> None:
        if not self._junk_logged:
            self._junk_logged = True
            logs.emit(
                "ack_protocol",
                f"ignoring an unexpected line on stdin: {text[:60]!r} (said once)",
            )

    # -- the runner's side ----------------------------------------------------------------------

    def check_ack_timeout(self) -> None:
        """Warn once when lines have waited longer than ack_timeout for their acknowledgement."""
        with self._lock:
            age = self.ledger.unacked_age(time.monotonic())
            if age > self.ack_timeout and not self._timeout_warned:
                self._timeout_warned = True
                logs.emit(
                    "ack_timeout",
                    f"{self.ledger.unacked} lines have waited {age:.0f} s for the shipper's "
                    f"acknowledgement; they will not be committed until acknowledged",
                    unacknowledged=self.ledger.unacked,
                    acknowledged=self.ledger.taken_position,
                    seconds=round(age, 1),
                )

    def _finish(self, timeout: float, clean: bool, interrupted: Callable[[], bool]) -> None:
        """Give the shipper a moment to send its last acknowledgements and STOP."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stopped and self.ledger.unacked and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def wait_for_room(self, should_stop: Callable[[], bool]) -> None:
        """Before a page: wait while ``max_unacked`` lines are written but not acknowledged, or
        acknowledged but not yet recorded (what a kill -9 sends again stays within the window
        and a page, however long a commit takes on the disk). A disk fault ends the wait: the
        runner's retry then owns the state file."""
        while not should_stop() and not self._stopped and not self.health.paused:
            if self.ledger.unacked >= self.max_unacked:
                with self._cond:
                    if self.ledger.unacked >= self.max_unacked:
                        self._cond.wait(0.25)
            elif self.ledger.lines - self.recorder.lines >= self.max_unacked:
                self.recorder.wait_for_lines(self.ledger.lines - self.max_unacked + 1, 0.25)
            else:
                return
            self.check_ack_timeout()


def make_delivery(
    mode: str,
    writer: LineWriter,
    commit: Callable[[Point], None],
    note: Optional[Callable[[Point, bool], None]] = None,
    settle: float = 0.0,
    stop: Optional[Stop] = None,
    **ack_options: object,
) -> Delivery:
    """The delivery for an ack mode already resolved to ``none`` or ``lines``."""
    if mode == "lines":
        # After STOP the shipper takes nothing more: finishing a half-written line is pointless
        # and would eat into its closeTimeout.
        writer.finish_line_grace = 0.0
        return AckDelivery(writer, commit, note, stop=stop, **ack_options)  # type: ignore[arg-type]
    if mode != "none":
        raise ValueError(f"unknown delivery mode {mode!r}")
    kind = fd_kind(writer.fd)
    if kind in ("pipe", "socket", "file"):
        return DrainDelivery(writer, commit, kind, note, settle, stop)
    return Delivery(writer, commit, note, stop=stop)
