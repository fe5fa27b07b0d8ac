"""The stdout writer: whole lines to the file descriptor, every byte checked, a vanished reader named.

`LineWriter` owns the stdout descriptor: it writes with `os.write` and checks what every call took
(Python's buffered ``sys.stdout`` can report a short write to a vanished reader as success), and
turns a vanished reader into `ConsumerGone`. No reader gets part of a line, whatever kills the
process: on a pipe every write is whole lines that fit its free room
(`kata_events.delivery.pipe_room`), which the kernel copies whole; a line larger than the pipe can
ever hold is written in parts (``on_oversize`` is told, once). A regular file found ending mid-line
at start (a kill tore a write) gets its fragment ended with a newline (`mend_torn_tail`). Writes
nothing but the lines it is given (and that newline); never logs.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import itertools
import os
import select
import time
from contextlib import suppress
from typing import Callable, Iterator, List, Optional, Tuple

from kata_events.delivery.disk_faults import DiskHealth, is_disk_fault
from kata_events.delivery.pipe_room import PipeRoom, grow_pipe
from kata_events.exits import ExitStatus
from kata_events.fds import fd_kind
from kata_events.state.progress import joined

#: errno values that mean "the reader is gone" rather than "try again".
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF}
#: While stopping, how long a half-written line may take to complete before it is abandoned.
FINISH_LINE_GRACE = 0.5
#: How long the writer waits for room in stdout before it looks at the stop flag again.
WRITE_POLL_MS = 50
#: Lines are written (and their delivery point tracked) in pieces of about this many bytes...
PIECE_BYTES = 256 * 1024
#: ...and at most this many lines (small events would otherwise make a piece of thousands).
PIECE_LINES = 500


class ConsumerGone(Exception):
    """stdout's reader went away (EPIPE and friends): stop quietly, commit nothing unflushed."""


class OutputFailed(Exception):
    """Writing or syncing stdout failed for another reason (a full or failing disk)."""

    exit_code = ExitStatus.IO_ERROR


def pieces(
    lines: List[bytes], limit: int = PIECE_BYTES, max_lines: int = PIECE_LINES
) -> Iterator[Tuple[bytes, int]]:
    """``lines`` as written, cut at line ends into (bytes, lines) pieces of about ``limit`` bytes
    and at most ``max_lines`` lines; a longer line is a piece of its own."""
    ends = list(itertools.accumulate(map((1).__add__, map(len, lines))))
    start = base = 0
    while start < len(lines):
        stop = bisect.bisect_right(ends, base + limit, lo=start)
        stop = min(max(stop, start + 1), start + max_lines)
        yield joined(lines[start:stop]), stop - start
        base = ends[stop - 1]
        start = stop


class WriteStopped(Exception):
    """A stop came while the writer waited for room (or the demo's event count was shown):
    ``written`` bytes went out (whole lines, unless one had to be cut)."""

    def __init__(self, message: str, written: int = 0) -> None:
        super().__init__(message)
        self.written = written


#: Waiting for room in a pipe that is not full (so poll() returns at once): sleep this long at
#: first, doubling up to `ROOM_WAIT_MAX`.
ROOM_WAIT_MIN = 0.0005
ROOM_WAIT_MAX = 0.01


def _shared_with_stderr(fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.fstat(2))
    except OSError:
        return False


class LineWriter:
    """On a pipe or socket the descriptor is made non-blocking and the writer waits for room with
    poll(), looking at ``should_stop`` between waits: a stop never lands in the middle of a write
    (its count would be lost), and an unfinished line gets `FINISH_LINE_GRACE` to complete. When
    stdout and stderr are one pipe (``2>&1``) the descriptor stays blocking: they share the flag.
    """

    def __init__(self, fd: int = 1, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.fd = fd
        self.should_stop = should_stop
        self.finish_line_grace = FINISH_LINE_GRACE
        # Also used when someone else made the descriptor non-blocking (a parent, or a shared
        # 2>&1 pipe): a full pipe is then a wait, never mistaken for a vanished reader.
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        self._made_nonblocking = False
        kind = fd_kind(fd)
        # A regular file (``>> file``) on a full or failing disk is waited out, not given up on.
        self._regular_file = kind == "file"
        #: True while a write waits out a disk fault (an fsync that succeeds meanwhile is no recovery).
        self.write_failing = False
        self.health: Optional[DiskHealth] = None
        #: Whole lines that went out in a write ended early (a stop, a reader gone), for the counts.
        self.cut_short_lines = 0
        #: Told once (line length, pipe capacity) when a line larger than the pipe is written in parts.
        self.on_oversize: Callable[[int, int], None] = lambda length, capacity: None
        self._oversize_told = False
        #: A pipe of our own: the slots our writes fill, so every write is whole lines that fit.
        self.room: Optional[PipeRoom] = None
        self._room_wait = ROOM_WAIT_MIN
        if kind in ("pipe", "socket") and not _shared_with_stderr(fd):
            with suppress(OSError):
                os.set_blocking(fd, False)
                self._made_nonblocking = True
            if kind == "pipe" and self._made_nonblocking:
                size = grow_pipe(fd)
                if size > 0:
                    self.room = PipeRoom(fd, size)

    def mend_torn_tail(self) -> int:
        """A regular file that ends mid-line (a kill tore a write): end that fragment with a newline.
        Returns the fragment's length (0: none, or the file cannot be read back)."""
        if not self._regular_file:
            return 0
        try:
            st = os.fstat(self.fd)
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            end = st.st_size if flags & os.O_APPEND else os.lseek(self.fd, 0, os.SEEK_CUR)
        except OSError:
            return 0
        offset, length = max(0, end - 65536), min(end, 65536)
        try:
            tail = os.pread(self.fd, length, offset)
        except OSError:
            # stdout is often opened write-only: the file is opened again for reading.
            try:
                with open(f"/proc/self/fd/{self.fd}", "rb", buffering=0) as f:
                    tail = os.pread(f.fileno(), length, offset)
            except OSError:
                return 0
        if not tail or tail.endswith(b"\n"):
            return 0
        self.write_bytes(b"\n")
        return len(tail) - (tail.rfind(b"\n") + 1)

    def _whole_lines_end(self, data: bytes, done: int, end: int) -> int:
        """Where the next write into the pipe stops: the last line end within its free room (0:
        wait for room). A line larger than the pipe can ever hold goes out in parts."""
        room = self.room
        assert room is not None
        free = room.room()
        if done + free >= end:
            return end
        cut = data.rfind(b"\n", done, done + free)
        if cut >= 0:
            return cut + 1
        line_end = data.index(b"\n", done) + 1
        if line_end - done > room.capacity:
            if not self._oversize_told:
                self._oversize_told = True
                self.on_oversize(line_end - done, room.capacity)
            return line_end
        return 0

    def _wait_for_room(self) -> None:
        """The pipe lacks room for the next whole line: wait for the reader (poll() blocks only
        while the pipe is quite full, so short sleeps cover the rest)."""
        started = time.monotonic()
        self._poll.poll(WRITE_POLL_MS)
        if time.monotonic() - started < self._room_wait:
            time.sleep(self._room_wait)
            self._room_wait = min(self._room_wait * 2, ROOM_WAIT_MAX)

    def write_bytes(self, data: bytes) -> int:
        """Write ``data`` (whole lines, each ending in a newline); return the bytes written."""
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
                        raise WriteStopped(f"stopped at a line boundary after {done} bytes", done)
                    # Finish the line under way, and nothing after it.
                    end = data.index(b"\n", done) + 1
                    now = time.monotonic()
                    if give_up_at is None:
                        give_up_at = now + self.finish_line_grace
                    if now >= give_up_at:
                        raise WriteStopped("stdout took no more while stopping: a line is cut", done)
                whole = True
                if self.room is not None and (done == 0 or data[done - 1] == 0x0A):
                    end = self._whole_lines_end(data, done, end)
                    if end == 0:
                        self._wait_for_room()
                        continue
                    self._room_wait = ROOM_WAIT_MIN
                    whole = end - done <= self.room.capacity
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
                        # Take back the start of a line the file got before its disk failed
                        # (``>> file`` has one writer: no one else appends meanwhile).
                        kept = data.rfind(b"\n", 0, done) + 1
                        if done > kept:
                            with suppress(OSError):
                                os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_END) - (done - kept))
                        raise WriteStopped("stopped while stdout's disk failed", kept) from None
                    continue
                if self.room is not None:
                    self.room.wrote(n, whole and n == end - done)
                if n > 0:
                    done += n
                    if disk_trouble:
                        disk_trouble = self.write_failing = False
                        self.health.recovered("stdout")  # type: ignore[union-attr]
                    continue
                self._poll.poll(WRITE_POLL_MS)
        except (WriteStopped, OSError) as exc:
            self.cut_short_lines = data.count(b"\n", 0, done)
            if isinstance(exc, WriteStopped):
                raise
            if exc.errno in _GONE:
                raise ConsumerGone(f"stdout closed: {os.strerror(exc.errno or 0)}") from None
            raise OutputFailed(f"writing stdout failed: {os.strerror(exc.errno or 0)}") from None
        return total

    def close(self) -> None:
        # Give the descriptor back blocking: a shell holding the same pipe writes after us.
        if self._made_nonblocking:
            with suppress(OSError):
                os.set_blocking(self.fd, True)
