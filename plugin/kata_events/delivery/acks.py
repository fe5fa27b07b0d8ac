"""``--ack lines``: the stdin acknowledgement protocol (rsyslog improg ``confirmMessages="on"``).

From the shipper: ``START\\n`` once, ``ACK\\n`` per line taken (pipelined), ``ACK <n>\\n`` for n lines
(an extension for custom consumers), ``STOP\\n`` before it closes the pipes. `AckParser` is pure.
`choose_ack_mode` decides ``--ack auto`` once at start without ever hanging on a stdin that will
never speak. `AckDelivery` reads the acknowledgements on its own thread and counts them as taken.
Nothing here writes to stdout but the delivery's event lines.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from kata_events import logs
from kata_events.delivery.policies import Delivery
from kata_events.fds import fd_kind
from kata_events.stopping import STOP_POLL

#: How long ``--ack auto`` listens on a silent stdin pipe for ``START`` before choosing ``none``.
START_GRACE = 0.5
#: The longest protocol line kept; anything longer is junk (and is not buffered without bound).
MAX_LINE = 128
#: How often the ack reader checks for lines waiting too long while stdin is silent.
ACK_CHECK_EVERY = 0.25


class AckEvent(NamedTuple):
    """One protocol line: ``start``, ``ack`` (with ``count``), ``stop``, ``junk`` (or ``eof``)."""

    kind: str
    count: int = 0
    text: str = ""


class AckParser:
    """Splits stdin bytes into protocol lines."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> List[AckEvent]:
        """The complete lines a chunk finished, in order."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            # No legitimate line is this long: report it once and keep only a bounded tail.
            lines.append(self._partial[:MAX_LINE])
            self._partial = b""
        return [parse_line(line) for line in lines if line.strip()]

    def close(self) -> List[AckEvent]:
        """End of input: a last line without newline still counts."""
        rest, self._partial = self._partial, b""
        return [parse_line(rest)] if rest.strip() else []


_WORDS = {"ACK": AckEvent("ack", 1), "START": AckEvent("start"), "STOP": AckEvent("stop")}


def parse_line(line: bytes) -> AckEvent:
    """One line (without newline) as a protocol event."""
    text = line.strip().decode("ascii", "replace")
    upper = text.upper()
    arg = text[4:].strip()
    if upper[:4] in ("ACK ", "ACK\t") and arg.isdigit() and int(arg) > 0:
        return AckEvent("ack", int(arg))
    return _WORDS.get(upper, AckEvent("junk", text=text))


def choose_ack_mode(requested: str, fd: int = 0, grace: float = START_GRACE) -> Tuple[str, str, bytes]:
    """Resolve ``--ack``: (mode, why, bytes read from stdin after ``START``). ``auto``: only a pipe
    or socket whose first line is ``START`` means ack mode; anything else none, at once where the
    answer is known (TTY, character device, closed or write-only descriptor, EOF)."""
    if requested != "auto":
        return requested, f"ack = {requested} was asked for", b""
    kind = fd_kind(fd)
    if kind not in ("pipe", "socket"):
        what = {None: "closed", "tty": "a terminal", "chardev": "a character device such as /dev/null"}
        return "none", f"stdin is {what.get(kind, 'not a pipe')}", b""
    received = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    start = time.monotonic()
    while b"\n" not in received and len(received) < MAX_LINE:
        deadline_left = grace - (time.monotonic() - start)
        if deadline_left <= 0:
            return "none", f"stdin said nothing within {grace:g} s", received
        if not poller.poll(deadline_left * 1000):
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            return "none", f"stdin cannot be read ({os.strerror(exc.errno or 0)})", b""
        if not chunk:
            if received.strip():
                break
            return "none", "stdin is at end of file", b""
        received += chunk
    first, _, rest = received.partition(b"\n")
    if first.strip().upper() == b"START":
        return "lines", "the shipper said START on stdin", rest
    return "none", f"stdin's first line is not START ({first[:40]!r})", b""


class AckDelivery(Delivery):
    """``--ack lines``: a line is taken when the shipper acknowledged it on stdin.

    A reader thread drains stdin all the time (else the shipper's ACK pipe fills and both sides
    block). Writing runs ahead of acknowledgements by a bounded window (`wait_for_room` before each
    page, the record window inside one). ``STOP`` or EOF asks the run to stop; acknowledgements
    after ``STOP`` are ignored.
    """

    mode = "lines"
    guarantee = "a line counts as delivered once the shipper acknowledged it"
    wait_for_commits = False

    def __init__(
        self,
        *args: Any,
        on_stop: Optional[Callable[[str], None]] = None,
        max_unacked: int,
        ack_timeout: float,
        stdin_fd: int = 0,
        already_read: bytes = b"",
        started: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition(self._lock)
        self._parser = AckParser()
        self._on_stop = on_stop if on_stop is not None else self.stop.ask_and_wake
        self.max_unacked = max(1, max_unacked)
        self.ack_timeout = ack_timeout
        self._fd = stdin_fd
        self._started = started
        self._stopped = False
        self._junk_logged = False
        self._overacks = 0
        self._timeout_warned = False
        for event in self._parser.feed(already_read):
            self._handle(event)
        threading.Thread(target=self._read_loop, name="acks", daemon=True).start()

    def _wait_ends(self) -> bool:
        return self._stopped or super()._wait_ends()

    def _check(self) -> None:
        # At a page's end: only an empty page can be wholly acknowledged already; later ACKs
        # release the rest.
        self._take(self.ledger.taken_position)

    def _write_piece(self, data: bytes, count: int) -> None:
        # Counted before the write: the shipper may read and acknowledge a line before os.write
        # returns, and an ACK for a line not yet counted would be dropped as excess.
        with self._lock:
            self.ledger.wrote(count, time.monotonic(), data, count)
        self.writer.write_bytes(data)

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
            for event in self._parser.feed(data) if data else [*self._parser.close(), AckEvent("eof")]:
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
            logs.emit("shipper_stop", f"the shipper said {what}: stopping", reason=what)
            self._on_stop(what)
        else:
            self._note_junk(event.text)

    def _note_junk(self, text: str) -> None:
        if not self._junk_logged:
            self._junk_logged = True
            logs.emit("ack_protocol", f"ignoring an unexpected line on stdin: {text[:60]!r} (said once)")

    def check_ack_timeout(self) -> None:
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

    def _finish(self, timeout: float, clean: bool) -> None:
        # Give the shipper a moment to send its last acknowledgements and STOP.
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stopped and self.ledger.unacked and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def wait_for_room(self) -> None:
        """Before a page: wait while ``max_unacked`` lines are written but not acknowledged, or
        acknowledged but not recorded (however long a commit takes on the disk). A stop or a disk
        fault ends the wait: the runner's retry then owns the state file."""
        while not self._wait_ends():
            if self.ledger.unacked >= self.max_unacked:
                with self._cond:
                    if self.ledger.unacked >= self.max_unacked:
                        self._cond.wait(0.25)
            elif self.ledger.lines - self.recorder.lines >= self.max_unacked:
                # Nothing notifies this wait of a stop: look at the stop state as often as every wait does.
                self.recorder.wait_for_lines(self.ledger.lines - self.max_unacked + 1, STOP_POLL)
            else:
                return
            self.check_ack_timeout()
