"""The delivery ledger: what has been written and taken, and the delivery point a position stands for.

Units are abstract positions (lines in ack mode, bytes otherwise): the ledger does not know whether
"taken" means flushed, fsynced, drained or acknowledged, it only counts. It keeps a trail of
delivery points (`kata_events.state.progress.Point`), one per piece written and one at each page
end: the token the page was asked with, its events written by then, their running digest.
`point_at` turns a taken position into the newest point at or before it; a page's end is the point
``(its token, 0)``, so the one mechanism that says how far delivery went also says which token may
be committed.

The settle window: `taken` dates each advance, and `settled_position` answers "what had been taken
``settle`` seconds ago" (for readers that may drop what they took while they shut down); older
checkpoints and dates are forgotten. `stop_position` also goes back at most ``settle_lines`` lines,
so a stop at full speed leaves a count uncounted, never a second of throughput.

Pure: no I/O, no clock of its own (times are passed in), no threads; never writes to stdout, never
touches the state file, never logs.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Optional, Tuple

from kata_events.state.progress import Point, new_hasher

#: A checkpoint: (position, token the page was asked with, events of the page up to here, hasher,
#: event lines written by the process up to here).
_Checkpoint = Tuple[int, Optional[str], int, Any, int]


class DeliveryLedger:
    """Counts written and taken units (cumulative from the start of the process), and keeps the
    trail of delivery points between them."""

    def __init__(self, settle: float = 0.0, settle_lines: int = 0) -> None:
        self.settle = settle
        #: The most lines a stop goes back (0: the whole settle window).
        self.settle_lines = settle_lines
        #: Units written, units the consumer has taken, event lines written (whatever the units).
        self.written = 0
        self.taken_position = 0
        self.lines = 0
        # (end position of a write, time of that write), oldest first, only for writes given a time;
        # entries wholly taken are dropped, so the deque is bounded by the unacknowledged window.
        self._write_times: Deque[Tuple[int, float]] = deque()
        # The page being written: [token it was asked with, events so far, running hasher], or None
        # before the first begin_page (then no checkpoint is made).
        self._page: Optional[list] = None
        self._trail: Deque[_Checkpoint] = deque()
        # (time, taken position) for every advance, oldest first, pruned to the settle window;
        # ``_settled_floor`` is a position known to be settled (taken before the oldest date kept).
        self._taken_at: Deque[Tuple[float, int]] = deque()
        self._settled_floor = 0
        #: Once a stop is asked for (or the reader is seen gone): dates are never pruned past it.
        self.frozen_at: Optional[float] = None

    def begin_page(self, token: Optional[str], events: int = 0, hasher: Any = None) -> None:
        """The next units belong to the answer to ``token`` (a page ends where the next begins), whose
        first ``events`` are already delivered (skipped on a resume) with ``hasher`` holding their
        digest (None: no events)."""
        self._page = [token, events, new_hasher() if hasher is None else hasher]
        self._checkpoint()

    def _checkpoint(self) -> None:
        if self._page is None:
            return
        token, events, hasher = self._page
        if self._trail and self._trail[-1][0] == self.written:
            self._trail.pop()
        self._trail.append((self.written, token, events, hasher.copy(), self.lines))

    def wrote(
        self, n: int, now: Optional[float] = None, data: Optional[bytes] = None, lines: int = 0
    ) -> None:
        """Record ``n`` more units written, dated ``now``; ``data`` (``lines`` event lines) extends
        the current page's digest and makes a checkpoint at the new position."""
        if n <= 0:
            return
        self.written += n
        self.lines += lines
        page = self._page
        if data is not None and page is not None:
            page[2].update(data)
            page[1] += lines
            self._checkpoint()
        if now is not None:
            if self._write_times and self._write_times[-1][1] == now:
                self._write_times.pop()
            self._write_times.append((self.written, now))

    def taken(self, position: int, now: Optional[float] = None) -> None:
        """The first ``position`` units are taken: beyond what was written raises ValueError; behind
        the current position (a stale report) is ignored."""
        if position > self.written:
            raise ValueError(f"consumer reports {position} units taken but only {self.written} were written")
        if position > self.taken_position:
            self.taken_position = position
            while self._write_times and self._write_times[0][0] <= position:
                self._write_times.popleft()
            if now is not None and self.settle > 0:
                self._taken_at.append((now, position))
                self._prune_dates(now)
        if self.settle <= 0:
            self._prune_trail(self.taken_position)

    def _checkpoint_at(self, position: int) -> Optional[_Checkpoint]:
        return next((entry for entry in reversed(self._trail) if entry[0] <= position), None)

    def point_at(self, position: int) -> Optional[Point]:
        """The newest delivery point at or before ``position`` (None when none is known)."""
        found = self._checkpoint_at(position)
        return None if found is None else Point(found[1], found[2], found[3].hexdigest())

    def lines_at(self, position: int) -> int:
        """Event lines written up to the newest checkpoint at or before ``position`` (0: none)."""
        found = self._checkpoint_at(position)
        return 0 if found is None else found[4]

    def settled_position(self, now: float) -> int:
        """The taken position as it was ``settle`` seconds before ``now``."""
        return self.taken_by(now - self.settle)

    def taken_by(self, when: float) -> int:
        """The taken position as it was at ``when`` (dates only; conservative)."""
        if self.settle <= 0:
            return self.taken_position
        taken = self._settled_floor
        for date, position in self._taken_at:
            if date > when:
                break
            taken = position
        return taken

    def stop_position(self, reference: float) -> int:
        """Where a stop measured from ``reference`` goes back to: what had settled by then, but no
        more than ``settle_lines`` lines (to a checkpoint) behind what was taken."""
        settled = self.settled_position(reference)
        if self.settle <= 0 or self.settle_lines <= 0:
            return settled
        taken = self.taken_by(reference)
        lines = self.lines_at(taken) - self.settle_lines
        # The newest checkpoint at most ``settle_lines`` behind (-1: none kept).
        by_count = next((entry[0] for entry in reversed(self._trail) if entry[4] <= lines), -1)
        return max(settled, min(by_count, taken))

    def lines_in_flight(self) -> int:
        """Event lines written beyond the newest checkpoint the reader has wholly taken."""
        return self.lines - self.lines_at(self.taken_position)

    def freeze(self, at: float) -> None:
        """A stop measured from ``at`` is coming: keep the dates it needs (takes while the process
        unwinds cannot move the floor)."""
        self.frozen_at = at if self.frozen_at is None else min(at, self.frozen_at)

    def _prune_dates(self, now: float) -> None:
        cutoff = (now if self.frozen_at is None else min(now, self.frozen_at)) - self.settle
        while len(self._taken_at) > 1 and self._taken_at[1][0] <= cutoff:
            self._settled_floor = self._taken_at.popleft()[1]
        if self._taken_at and self._taken_at[0][0] <= cutoff:
            self._settled_floor = max(self._settled_floor, self._taken_at[0][1])
        self._prune_trail(self._settled_floor)

    def _prune_trail(self, position: int) -> None:
        while len(self._trail) > 1 and self._trail[1][0] <= position:
            self._trail.popleft()

    @property
    def unacked(self) -> int:
        return self.written - self.taken_position

    def unacked_age(self, now: float) -> float:
        """Seconds the oldest untaken unit has waited since it was written (0: all taken, or not dated)."""
        if self.taken_position >= self.written or not self._write_times:
            return 0.0
        return max(0.0, now - self._write_times[0][1])
