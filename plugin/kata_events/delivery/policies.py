"""Delivery: decides when a line counts as taken, and offers the delivery point it reaches.

A `Delivery` joins the stdout writer to a `DeliveryLedger` and the one `Recorder`: the runner says
where pages begin and end, lines are written in pieces (`PIECE_BYTES`, `PIECE_LINES`), and after
each piece the delivery point the taken position stands for is offered to the recorder, which
alone writes the state; writing waits while the record lags (`RECORD_AHEAD_LINES`). "Taken" means
(`make_delivery`): acknowledged on stdin (``--ack lines``, `kata_events.delivery.acks`); out of
the pipe, acknowledged by the peer's TCP stack or fsynced (``--ack none``,
`kata_events.delivery.drain`); written (a terminal: `Delivery` itself).

The delivery lock serialises the ledger's updates from the main and background threads; it is
never held while the state is written. A disk fault on the state file or a regular-file stdout
pauses (`kata_events.delivery.disk_faults`) instead of ending the process. This module writes
nothing but event lines to stdout and never logs tokens.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional

from kata_events.delivery.disk_faults import DiskHealth
from kata_events.delivery.ledger import DeliveryLedger
from kata_events.delivery.recorder import Note, Recorder
from kata_events.delivery.writer import PIECE_LINES, LineWriter, OutputFailed, WriteStopped, pieces
from kata_events.fds import fd_kind
from kata_events.state.progress import Point
from kata_events.stopping import Stop

#: How often the drain of a pipe or socket is looked at while pages wait for their commit.
DRAIN_POLL = 0.05
#: Writing waits while this many lines are written but not yet recorded as delivered (in the state
#: file or its progress record), in every mode: a busy machine, a slow disk or an acknowledgement
#: thread kept off the CPU slows the writing, never lets what a kill -9 sends again grow. A restart
#: re-sends at most this plus one piece: `RESEND_BOUND` lines.
RECORD_AHEAD_LINES = 2000
#: The bound on lines delivered and sent again after a kill -9, whatever the threads' timing.
RESEND_BOUND = RECORD_AHEAD_LINES + PIECE_LINES


class Delivery:
    """Written is taken (a terminal, or anything whose drain cannot be measured). ``commit``,
    ``note``: the state's writers, handed to the `Recorder`."""

    mode = "none"
    guarantee = "a page counts as delivered once written"
    #: Whether writing waits for a page's commit to be durable before it goes on.
    wait_for_commits = True
    #: The policy's own thread (``fsync``, ``drain``), ended and joined at close (None: none).
    _thread: Optional[threading.Thread] = None

    def __init__(
        self,
        writer: LineWriter,
        commit: Callable[[Point], None],
        note: Optional[Note] = None,
        stop: Optional[Stop] = None,
    ) -> None:
        self.stop = stop if stop is not None else Stop()
        writer.should_stop = lambda: self.stop.stopping
        self.writer = writer
        self.ledger = DeliveryLedger()
        self._lock = threading.Lock()
        self._closing = False
        self.health = DiskHealth()
        writer.health = self.health
        self.recorder = Recorder(commit, note, self.health)
        #: An error a background thread hit that the process cannot go on with (it asks for a stop).
        self.failure: Optional[OutputFailed] = None

    def begin_page(self, token: Optional[str], events: int = 0, hasher: Any = None) -> None:
        """The next lines answer ``token``; its first ``events`` (digest in ``hasher``) are delivered."""
        with self._lock:
            self.ledger.begin_page(token, events, hasher)

    def written_point(self) -> Optional[Point]:
        """The point at what is written: a retry of the page may skip that much."""
        with self._lock:
            return self.ledger.point_at(self.ledger.written)

    def write(self, lines: List[bytes]) -> None:
        """Write one batch of lines of the current page."""
        for data, count in pieces(lines):
            self._wait_for_record(count)
            self._write_piece(data, count)

    def _write_piece(self, data: bytes, count: int) -> None:
        try:
            self.writer.write_bytes(data)
        except WriteStopped as exc:
            # A stop in the middle of a piece still counts the whole lines it wrote.
            if exc.written > 0:
                part = data[: exc.written]
                with self._lock:
                    self.ledger.wrote(exc.written, time.monotonic(), part, part.count(b"\n"))
                    self._nudge()
            raise
        with self._lock:
            self.ledger.wrote(len(data), time.monotonic(), data, count)
            self._check()

    def _check(self) -> None:
        """With the lock held: record what is taken by now (here: everything written)."""
        self._take(self.ledger.written)

    def _wait_for_record(self, count: int) -> None:
        """Before a piece of ``count`` lines. The wait ends at a stop, or while a disk fault pauses
        recording (the runner's retry then owns the state file, and the bound is the pause's)."""
        recorder = self.recorder
        # A page's commit is waited for before writing on, as the reader's pace allows: what a
        # kill -9 sends again stays within about two pages (ack mode: the shipper paces writing).
        while self.wait_for_commits and not self._wait_ends() and recorder.wait_for_commit(DRAIN_POLL):
            pass
        while self.ledger.lines - recorder.lines >= RECORD_AHEAD_LINES and not self._wait_ends():
            with self._lock:
                self._nudge()
            recorder.wait_for_lines(self.ledger.lines - RECORD_AHEAD_LINES + 1, DRAIN_POLL)

    def _wait_ends(self) -> bool:
        """Whether a wait for the record must give up (a stop, a disk fault, closing)."""
        return self._closing or self.stop.stopping or self.health.paused

    def _nudge(self) -> None:
        """With the lock held: help the record move while the writer waits for it, or after a piece
        a stop cut (subclasses)."""

    def end_page(self, token: str) -> None:
        """The current page is complete; its token may be committed once its lines are taken."""
        with self._lock:
            self.ledger.begin_page(token)
            self._check()

    def _take(self, position: int) -> None:
        """With the lock held: record ``position`` as taken, and the delivery point it reaches."""
        if self.stop.at is not None:
            self.ledger.freeze(self.stop.at)
        self.ledger.taken(position, time.monotonic())
        taken = self.ledger.taken_position
        self.recorder.offer(self.ledger.point_at(taken), lines=self.ledger.lines_at(taken), position=taken)

    def retry(self) -> None:
        """While paused on a disk fault: try the failed step again (the runner, with backoff)."""
        self.recorder.flush(retry=True)

    def wait_for_room(self) -> None:
        """Block while too much is unacknowledged (ack mode)."""

    def check_ack_timeout(self) -> None:
        """Warn when lines wait too long for their acknowledgement (ack mode)."""

    def finish(self, timeout: float, clean: bool = False) -> None:
        """Last chance to record before exit. ``clean``: a --once run that caught up (a pipe then
        waits for the drain and the settle time, unless a stop is asked for meanwhile); otherwise a
        stop (a pipe goes back to the point that had settled)."""
        self._finish(timeout, clean)
        self.recorder.flush()

    def _finish(self, timeout: float, clean: bool) -> None:
        """What `finish` waits for before the last record (subclasses)."""

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self.recorder.close()
        self.writer.close()


def make_delivery(
    mode: str,
    writer: LineWriter,
    commit: Callable[[Point], None],
    note: Optional[Note] = None,
    settle: float = 0.0,
    stop: Optional[Stop] = None,
    settle_lines: int = 0,
    **ack_options: object,
) -> Delivery:
    """The delivery for an ack mode already resolved to ``none`` or ``lines``."""
    from kata_events.delivery.acks import AckDelivery
    from kata_events.delivery.drain import DrainDelivery, SyncDelivery

    if mode == "lines":
        # After STOP the shipper takes nothing more: finishing a half-written line is pointless
        # and would eat into its closeTimeout.
        writer.finish_line_grace = 0.0
        return AckDelivery(writer, commit, note, stop=stop, **ack_options)  # type: ignore[arg-type]
    kind = fd_kind(writer.fd)
    if kind == "file":
        return SyncDelivery(writer, commit, note, stop)
    if kind in ("pipe", "socket"):
        return DrainDelivery(writer, commit, note, stop, kind=kind, settle=settle, settle_lines=settle_lines)
    return Delivery(writer, commit, note, stop)
