"""Delivery: writes event lines to stdout and decides when a page counts as taken.

`LineWriter` owns the stdout file descriptor: it writes whole batches with `os.write`, checks what
every call really took, and turns a vanished reader into `ConsumerGone`. Python's buffered
``sys.stdout`` is never used for events: on a pipe whose reader went away it can report a short
write as success.

A `Delivery` joins the writer to a `DeliveryLedger` and a commit callback: the runner says where
pages end, and a page's token is committed only once the ledger says everything up to that page
was taken. What "taken" means depends on what stdout is (see `make_delivery`):

- ``--ack lines`` (`AckDelivery`): the shipper acknowledged the line on stdin (rsyslog improg).
- ``--ack none`` on a pipe (`DrainDelivery`): the reader has taken the bytes out of the pipe
  (``FIONREAD`` on our end shows what is still unread); on a TCP socket, the peer acknowledged
  them (``SIOCOUTQ``); on a regular file, they were fsynced.
- anything else (a terminal): written is taken.

Commits may happen on a background thread (acknowledgements and drain arrive while the loop waits
in a long poll); all ledger updates and commits are serialised by one lock. A commit or a
regular-file stdout failing mid-run on a disk fault does not end the process: it is reported to
the `DiskHealth` (`kata_events.disk_faults`), the token released but not saved is kept, and
`retry` saves it once the disk works again. This module writes
nothing but event lines to stdout and never logs tokens.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import termios
import threading
import time
from typing import Callable, List, Optional

from kata_events import logs
from kata_events.acks import AckEvent, AckParser
from kata_events.disk_faults import DiskHealth, is_disk_fault
from kata_events.fds import fd_kind
from kata_events.ledger import DeliveryLedger
from kata_events.state import StateError, short_token

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


class ConsumerGone(Exception):
    """stdout's reader went away (EPIPE and friends): stop quietly, commit nothing unflushed."""


class OutputFailed(Exception):
    """Writing or syncing stdout failed for another reason (a full or failing disk)."""


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
        data = b"\n".join(lines) + b"\n"
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
                    disk_trouble = True
                    self.health.trouble("stdout", f"writing stdout failed: {os.strerror(exc.errno or 0)}")
                    if not self.health.wait(self.should_stop):
                        self._cut_partial_line(data, done)
                        raise WriteStopped("stopped while stdout's disk failed") from None
                    continue
                if n > 0:
                    done += n
                    if disk_trouble:
                        disk_trouble = False
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
    """Written is taken: for a terminal or anything whose drain cannot be measured."""

    mode = "none"
    guarantee = "a page counts as delivered once written"

    def __init__(self, writer: LineWriter, commit: Callable[[str], None]) -> None:
        self.writer = writer
        self.ledger = DeliveryLedger()
        self._commit = commit
        self._lock = threading.Lock()
        self.committed_pages = 0
        #: Told when a background thread hits an error the process cannot go on with.
        self.on_failure: Callable[[Exception], None] = lambda exc: None
        #: Whether the state file and stdout take data; the runner pauses fetching while not.
        self.health = DiskHealth()
        writer.health = self.health
        # The newest token released by the ledger but not saved yet (its commit failed).
        self._unsaved: Optional[str] = None

    def write(self, lines: List[bytes]) -> None:
        """Write one batch of lines belonging to the current page."""
        self.writer.write_lines(lines)
        with self._lock:
            self.ledger.wrote(len(lines), time.monotonic())
            self._take(self.ledger.written)

    def end_page(self, token: str) -> None:
        """The current page is complete; its token may be committed once its lines are taken."""
        with self._lock:
            self.ledger.page_end(token)
            self._take(self.ledger.written)

    def _take(self, position: int) -> None:
        """With the lock held: record ``position`` as taken and commit what that releases."""
        token = self.ledger.taken(position)
        if token is not None:
            self._unsaved = token
        self._save()

    def _save(self, retry: bool = False) -> None:
        """With the lock held: commit the token released last, unless the state file is failing.

        While it fails, only the runner's `retry` tries again (with backoff), not every
        acknowledgement. A failed commit leaves the previous state file whole.
        """
        token = self._unsaved
        if token is None:
            if retry:
                self.health.recovered("state file")
            return
        if self.health.failing("state file") and not retry:
            return
        try:
            self._commit(token)
        except StateError as exc:
            self.health.trouble("state file", str(exc))
            return
        self._unsaved = None
        self.health.recovered("state file")
        self.committed_pages += 1
        logs.emit(
            "commit",
            "continuation token saved: everything before it is delivered",
            pages=self.committed_pages,
            position=self.ledger.taken_position,
            token=short_token(token),
        )

    @property
    def unacked(self) -> int:
        return self.ledger.unacked

    def retry(self) -> None:
        """While paused on a disk fault: try the failed step again (the runner calls it with backoff)."""
        with self._lock:
            self._save(retry=True)

    def wait_for_room(self, should_stop: Callable[[], bool]) -> None:
        """Block while too much is unacknowledged; nothing to wait for when written is taken."""

    def check_ack_timeout(self) -> None:
        """Warn when lines wait too long for their acknowledgement (ack mode only)."""

    def finish(self, timeout: float) -> None:
        """Last chance to commit before exit (drain and ack modes wait for the tail here)."""

    def close(self) -> None:
        """Stop background threads and give stdout back as it was."""
        self.writer.close()


class DrainDelivery(Delivery):
    """``--ack none`` on a pipe, socket or file: taken is what left the pipe / reached the peer / disk.

    Units are bytes. Writing never waits for the drain; a watcher thread commits pages as their
    bytes are taken, so the commit lags at most about a page behind what was written.
    """

    def __init__(self, writer: LineWriter, commit: Callable[[str], None], kind: str) -> None:
        super().__init__(writer, commit)
        self.kind = kind
        self.guarantee = {
            "pipe": "a page counts as delivered once the reader has taken its bytes out of the pipe",
            "socket": "a page counts as delivered once the peer's TCP stack acknowledged its bytes",
            "file": "a page counts as delivered once its bytes are fsynced to the file",
        }[kind]
        self._measurable = True
        self._wake = threading.Event()
        self._closing = False
        self._thread: Optional[threading.Thread] = None
        if kind in ("pipe", "socket"):
            self._thread = threading.Thread(target=self._watch, name="drain", daemon=True)
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
        """With the lock held: commit whatever the reader has taken by now."""
        if self.kind == "file":
            return
        position = max(0, self.ledger.written - self._unread())
        self._take(position)

    def write(self, lines: List[bytes]) -> None:
        n = self.writer.write_lines(lines)
        with self._lock:
            self.ledger.wrote(n, time.monotonic())
            self._check()
        self._wake.set()

    def end_page(self, token: str) -> None:
        with self._lock:
            if self.kind == "file":
                self.ledger.page_end(token)
                self._sync_and_take()
                return
            self.ledger.page_end(token)
            self._check()
        self._wake.set()

    def _sync_and_take(self) -> None:
        """With the lock held (file stdout): fsync, then everything written is taken."""
        try:
            os.fsync(self.writer.fd)
        except OSError as exc:
            if is_disk_fault(exc):
                # Pages stay uncommitted until an fsync succeeds.
                self.health.trouble("stdout", f"syncing stdout failed: {os.strerror(exc.errno or 0)}")
                return
            if exc.errno != errno.EINVAL:
                raise OutputFailed(f"syncing stdout failed: {os.strerror(exc.errno or 0)}") from None
        self.health.recovered("stdout")
        self._take(self.ledger.written)

    def retry(self) -> None:
        with self._lock:
            if self.kind == "file" and self.health.failing("stdout"):
                self._sync_and_take()
            self._save(retry=True)

    def _watch(self) -> None:
        while not self._closing:
            if self.ledger.pending_pages == 0:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            time.sleep(DRAIN_POLL)
            with self._lock:
                self._check()

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ledger.pending_pages and time.monotonic() < deadline:
            with self._lock:
                self._check()
            if self.ledger.pending_pages:
                time.sleep(DRAIN_POLL / 2)

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
    window: before each new page the runner waits in `wait_for_room`. ``STOP`` or EOF on stdin
    asks the runner to stop; acknowledgements after ``STOP`` are ignored.
    """

    mode = "lines"
    guarantee = "a page counts as delivered once the shipper acknowledged each of its lines"

    def __init__(
        self,
        writer: LineWriter,
        commit: Callable[[str], None],
        *,
        on_stop: Callable[[str], None],
        max_unacked: int,
        ack_timeout: float,
        stdin_fd: int = 0,
        already_read: bytes = b"",
        started: bool = False,
    ) -> None:
        super().__init__(writer, commit)
        self._cond = threading.Condition(self._lock)
        self._parser = AckParser()
        self._on_stop = on_stop
        self.max_unacked = max(1, max_unacked)
        self.ack_timeout = ack_timeout
        self._fd = stdin_fd
        self._started = started
        self._stopped = False
        self._junk_logged = False
        self._overack_logged = False
        self._timeout_warned = False
        self._thread = threading.Thread(target=self._read_loop, name="acks", daemon=True)
        if already_read:
            for event in self._parser.feed(already_read):
                self._handle(event)
        self._thread.start()

    def end_page(self, token: str) -> None:
        with self._lock:
            self.ledger.page_end(token)
            # Only an empty page can be wholly acknowledged already; later ACKs release the rest.
            self._take(self.ledger.taken_position)

    def write(self, lines: List[bytes]) -> None:
        # Counted before the write: the shipper may read and acknowledge a line before os.write
        # returns, and an ACK for a line not yet counted would be dropped as excess.
        with self._lock:
            self.ledger.wrote(len(lines), time.monotonic())
        self.writer.write_lines(lines)

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
                    if not self._overack_logged:
                        self._overack_logged = True
                        logs.emit(
                            "ack_protocol",
                            f"the shipper acknowledged {position} lines but only "
                            f"{self.ledger.written} were written; the excess is ignored",
                        )
                    position = self.ledger.written
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

    def finish(self, timeout: float) -> None:
        """Give the shipper a moment to send its last acknowledgements and STOP."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stopped and self.ledger.unacked and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def wait_for_room(self, should_stop: Callable[[], bool]) -> None:
        with self._cond:
            while self.ledger.unacked >= self.max_unacked and not should_stop() and not self._stopped:
                self._cond.wait(0.25)
                self._lock.release()
                try:
                    self.check_ack_timeout()
                finally:
                    self._lock.acquire()


def make_delivery(
    mode: str,
    writer: LineWriter,
    commit: Callable[[str], None],
    **ack_options: object,
) -> Delivery:
    """The delivery for an ack mode already resolved to ``none`` or ``lines``."""
    if mode == "lines":
        # After STOP the shipper takes nothing more: finishing a half-written line is pointless
        # and would eat into its closeTimeout.
        writer.finish_line_grace = 0.0
        return AckDelivery(writer, commit, **ack_options)  # type: ignore[arg-type]
    if mode != "none":
        raise ValueError(f"unknown delivery mode {mode!r}")
    kind = fd_kind(writer.fd)
    if kind in ("pipe", "socket", "file"):
        return DrainDelivery(writer, commit, kind)
    return Delivery(writer, commit)
